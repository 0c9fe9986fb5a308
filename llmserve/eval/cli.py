"""`llmserve eval`: one table comparing precisions on accuracy, memory and decode speed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmserve.eval.report import to_json, to_markdown
from llmserve.eval.runner import EvalOptions, run_eval
from llmserve.eval.settings import parse_settings


def add_eval_parser(sub) -> None:
    parser = sub.add_parser("eval", help="accuracy, memory and decode latency of each precision against fp32")
    parser.add_argument("--model", default=None,
                        help="HF folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--quantization", "-q", default="none,int8,int4,w8a8",
                        help="settings to compare with the fp32 baseline, comma-separated: none (the --dtype model), "
                             "int8, int4, w8a8, fp8; `+` keeps modules in full precision, e.g. int4+lm_head+layers.0 "
                             "(default: none,int8,int4,w8a8)")
    parser.add_argument("--dtype", default="auto", help="dtype of the compared settings (default: auto)")
    parser.add_argument("--quant-group-size", type=int, default=None, help="int4 group size: 32, 64 or 128")
    parser.add_argument("--quant-skip", default=None, metavar="MODULES",
                        help="modules every quantized setting keeps in full precision")
    parser.add_argument("--text", default=None, metavar="FILE",
                        help="text for perplexity and top-1 agreement (default: a public-domain sample shipped "
                             "with llmserve, ~3,900 tokens)")
    parser.add_argument("--window", type=int, default=512, help="tokens per perplexity window")
    parser.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per prompt for the match rate")
    parser.add_argument("--decode-tokens", type=int, default=64, help="timed decode steps per batch size")
    parser.add_argument("--batch-sizes", default="1,16", help="decode batch sizes to time")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: adapt to the cores this process may use, fewer while other "
                             "processes keep some busy)")
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                        help="where every setting runs (default: auto, the first GPU when CUDA is available, else "
                             "the CPU; fp8 needs a GPU)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="write the table as Markdown")
    parser.set_defaults(func=cmd_eval)


def _refuse_quantized_checkpoint(model: str | None) -> None:
    """The baseline must be the full-precision model; a quantized folder has none to offer."""
    config = Path(model).expanduser() / "config.json" if model else None
    if config is not None and config.is_file() and "quantization_config" in json.loads(config.read_text()):
        raise ValueError(f"{model} is already quantized; run eval on the model it was quantized from")


def cmd_eval(args: argparse.Namespace) -> int:
    from llmserve.devices import resolve_device
    from llmserve.model.loader import resolve_dtype

    device = str(resolve_device(args.device))
    dtype = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    settings = parse_settings(args.quantization, dtype, args.quant_group_size, args.quant_skip)
    for setting in settings:
        setting.quant.check_device(device)
    text = Path(args.text).read_text() if args.text else None
    if args.window < 2 or args.max_tokens < 1 or args.decode_tokens < 2:
        raise ValueError("--window must be at least 2, --max-tokens at least 1, --decode-tokens at least 2")
    if text is not None and not text.strip():
        raise ValueError(f"{args.text} is empty")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) < 1 or len(set(batch_sizes)) != len(batch_sizes):
        raise ValueError("--batch-sizes must list distinct positive integers, e.g. 1,16")
    _refuse_quantized_checkpoint(args.model)
    options = EvalOptions(model=args.model, text=text, window=args.window, max_tokens=args.max_tokens,
                          decode_tokens=args.decode_tokens, threads=args.threads, device=device,
                          batch_sizes=batch_sizes)
    try:
        rows, meta = run_eval(settings, options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except RuntimeError as exc:  # a setting's process failed; its last error line says why
        print(f"llmserve: error: {exc}", file=sys.stderr)
        return 1
    table = to_markdown(rows, reference=dtype, device=meta.get("device_name"))
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows, meta), indent=2) + "\n")
    return 0
