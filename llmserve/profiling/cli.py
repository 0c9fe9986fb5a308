"""`llmserve profile`: where a step's time goes for one model on this machine, as a table (or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from llmserve.config import BACKENDS


class _OneLineParser(argparse.ArgumentParser):
    """Any bad flag or value is one line on stderr and exit 2, without the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_profile_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="llmserve profile", description=(
        "Run a prefill of --batch prompts of --context tokens, then decode steps, under torch's profiler, "
        "and print where each step's time goes (attention, linears, norms, ...), the memory by component, "
        "and the GB/s and GFLOP/s each part reaches against this machine's measured copy bandwidth and "
        "matmul peak."))
    parser.add_argument("--model", default=None,
                        help="HF folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--quantization", "-q", default=None, help="none | int8 | int4 | w8a8 | fp8")
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="attention backend: auto (the device's own), cpu, torch or cuda")
    parser.add_argument("--batch", type=_positive, default=1, help="sequences in the batch (default: 1)")
    parser.add_argument("--context", type=_positive, default=128, help="prompt tokens per sequence (default: 128)")
    parser.add_argument("--decode-steps", type=_positive, default=8, help="decode steps measured (default: 8)")
    parser.add_argument("--threads", type=_positive, default=None, help="CPU threads (default: the engine's)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--trace", default=None, metavar="FILE",
                        help="also write torch's profiler trace (Chrome trace JSON, for Perfetto) to FILE")
    return parser


def add_profile_parser(sub: Any) -> None:
    """Registered with the other commands; its flags are parsed by its own parser, so that a bad one
    is a single line (the top-level parser would report unknown flags with its usage block)."""
    profile = sub.add_parser("profile", add_help=False, prefix_chars="\0",
                             help="where an engine step's time and memory go, for one model on this machine")
    profile.add_argument("argv", nargs=argparse.REMAINDER)
    profile.set_defaults(func=lambda args: run_profile(args.argv))


def run_profile(argv: list[str]) -> int:
    args = build_profile_parser().parse_args(argv)
    from llmserve.cli import _check_model_path
    from llmserve.profiling.profile import profile
    from llmserve.profiling.workload import ProfileSettings

    _check_model_path(args.model)
    settings = ProfileSettings(model=args.model, dtype=args.dtype, quantization=args.quantization,
                               device=args.device, backend=args.backend, batch=args.batch, context=args.context,
                               decode_steps=args.decode_steps, threads=args.threads)
    report = profile(settings, trace_path=args.trace)
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0
