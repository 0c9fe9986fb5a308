"""Offline throughput: llmserve's continuous batching vs. transformers' static-batch `generate`.

Both run the same seeded workload of random token prompts with greedy decoding and a fixed
output length per request (EOS ignored), at one precision for both (--dtype; by default the one
our engine's `auto` picks: bf16 on a GPU and on CPUs with AMX-BF16, else fp32), on all cores or on
--device (default auto: the GPU when there is one). Also measured:
our batch-1 decode speed against the memory-bandwidth roofline, and peak RSS.

    python benchmarks/offline_throughput.py [--num-requests 64] [--input-len 32:512] [--output-len 32:256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    BenchRequest,
    current_rss_mib,
    make_workload,
    measure_copy_bandwidth,
    median,
    num_cores,
    parse_range,
    peak_rss_mib,
)
from llmserve import LLM, SamplingParams  # noqa: E402
from llmserve.devices import resolve_device  # noqa: E402
from llmserve.model.loader import resolve_dtype  # noqa: E402
from llmserve.quant.apply import weights_nbytes  # noqa: E402

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

# Context length at which the KV read of the batch-1 roofline is counted: mid-way through decode.
B1_PROMPT_LEN = 128
B1_OUTPUT_LEN = 128
B1_TRIALS = 3


@dataclass
class RunResult:
    seconds: float
    prompt_tokens: int
    output_tokens: int  # tokens the requests asked for: what a user gets
    computed_output_tokens: int  # including tokens a static batch generates past a request's length
    outputs: list[list[int]] = field(repr=False)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def total_tok_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds

    def summary(self) -> dict[str, float]:
        return {"seconds": self.seconds, "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "computed_output_tokens": self.computed_output_tokens, "output_tok_s": self.output_tok_s,
                "total_tok_s": self.total_tok_s}


# --- our engine ------------------------------------------------------------------------------

def load_ours(args: argparse.Namespace, threads: int) -> tuple[LLM, float]:
    start = time.perf_counter()
    llm = LLM(model=None, dtype=args.dtype, max_num_seqs=args.max_num_seqs, kv_cache_memory=args.kv_cache_memory,
              max_num_batched_tokens=args.max_num_batched_tokens, num_threads=threads, seed=args.seed,
              device=args.device, quantization=args.quantization, quant_group_size=args.quant_group_size,
              quant_skip=args.quant_skip)
    return llm, time.perf_counter() - start


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def run_ours(llm: LLM, workload: list[BenchRequest]) -> RunResult:
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in workload]
    params = [greedy(r.output_len) for r in workload]
    llm.reset_prefix_cache()  # a repeat of the workload must not find the last one's prompts cached
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    outputs = [list(o.outputs[0].token_ids) for o in outs]
    return _result(seconds, workload, outputs, sum(len(o) for o in outputs))


def _result(seconds: float, workload: list[BenchRequest], outputs: list[list[int]], computed: int) -> RunResult:
    for request, out in zip(workload, outputs, strict=True):
        if len(out) != request.output_len:
            raise RuntimeError(f"a request asked for {request.output_len} tokens but got {len(out)}")
    return RunResult(seconds, sum(len(r.prompt_token_ids) for r in workload),
                     sum(r.output_len for r in workload), computed, outputs)


def batch1_decode_tok_s(llm: LLM, vocab_size: int, seed: int, prompt_len: int = B1_PROMPT_LEN,
                        output_len: int = B1_OUTPUT_LEN, trials: int = B1_TRIALS) -> list[float]:
    """Decode tokens/s of one request alone, timed from its first token (the prefill) to its last."""
    engine = llm.engine
    request = make_workload(1, (prompt_len, prompt_len), (output_len, output_len), vocab_size, seed + 1)[0]
    rates = []
    for trial in range(trials):
        engine.add_request(f"bench-batch1-{trial}", request.prompt_token_ids, greedy(output_len))
        first = last = None
        while engine.has_unfinished_requests():
            outs = engine.step()
            now = time.perf_counter()
            if first is None and any(o.outputs[0].token_ids for o in outs):
                first = now
            if any(o.finished for o in outs):
                last = now
        assert first is not None and last is not None
        rates.append((output_len - 1) / (last - first))
    return rates


def decode_bytes_per_step(llm: LLM) -> dict[str, Any]:
    """Bytes of weights one batch-1 decode step must stream from memory."""
    model = llm.engine.runner.model
    cfg = llm.engine.model_config
    total = weights_nbytes(model)  # quantized weights included; a tied matrix counts once
    emb = model.embed_tokens.weight if hasattr(model.embed_tokens, "weight") else model.embed_tokens.qweight
    row = emb.shape[1] * emb.element_size()
    if cfg.tie_word_embeddings:
        # The lm_head matmul reads the whole shared matrix; the input lookup adds just one row.
        weights = total + row
        note = "all parameters once (tied embedding read whole by lm_head) + one embedding row for the lookup"
    else:
        weights = total - emb.numel() * emb.element_size() + row
        note = "all parameters, except that the input embedding lookup reads one row, not the table"
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * llm.engine.dtype.itemsize
    mid_context = B1_PROMPT_LEN + B1_OUTPUT_LEN // 2
    return {"weights": weights, "kv_at_mid_context": kv_per_token * mid_context, "mid_context": mid_context,
            "accounting": note}


# --- transformers baseline ------------------------------------------------------------------

def load_hf(dtype: str = "float32", device: str = "cpu") -> tuple[LlamaForCausalLM, float]:
    import transformers

    from llmserve.model.embedded import embedded_model_path
    from llmserve.model.gguf_reader import read_gguf

    start = time.perf_counter()
    checkpoint = read_gguf(embedded_model_path())
    config = transformers.LlamaConfig(**checkpoint.config)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    missing, unexpected = model.load_state_dict(dict(checkpoint.tensors()), strict=False)
    allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"HF weights do not match: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("HF lm_head is not tied to the embedding: its logits would be random")
    return model.to(device), time.perf_counter() - start


@torch.inference_mode()
def run_hf(model: LlamaForCausalLM, workload: list[BenchRequest], batch_size: int) -> RunResult:
    pad_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    outputs: list[list[int]] = []
    computed = 0
    start = time.perf_counter()
    for first in range(0, len(workload), batch_size):
        batch = workload[first:first + batch_size]
        ids, mask = (t.to(model.device) for t in _left_padded(batch, pad_id))
        new = max(r.output_len for r in batch)
        # min == max keeps every row generating to the batch's longest length, EOS or not.
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=pad_id)
        generated = out[:, ids.shape[1]:]
        computed += generated.numel()
        outputs += [generated[row, :r.output_len].tolist() for row, r in enumerate(batch)]
    return _result(time.perf_counter() - start, workload, outputs, computed)


def _left_padded(batch: list[BenchRequest], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r.prompt_token_ids) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, r in enumerate(batch):
        n = len(r.prompt_token_ids)
        ids[row, width - n:] = torch.tensor(r.prompt_token_ids)
        mask[row, width - n:] = 1
    return ids, mask


# --- reporting -------------------------------------------------------------------------------

def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict[str, float]:
    """How far greedy outputs match: a sanity check that both ran the same model (fp32 ties may split them)."""
    identical = sum(a == b for a, b in zip(ours, theirs, strict=True))
    prefix = [_common_prefix(a, b) / max(len(a), 1) for a, b in zip(ours, theirs, strict=True)]
    return {"identical_requests": identical, "requests": len(ours), "mean_matching_prefix": sum(prefix) / len(prefix)}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _fmt_run(name: str, run: RunResult) -> str:
    return (f"{name}: {run.output_tok_s:8.1f} output tok/s, {run.total_tok_s:8.1f} total tok/s "
            f"({run.seconds:.1f} s)")


def print_repeat(index: int, ours: RunResult, hf: RunResult | None) -> None:
    line = f"repeat {index + 1}: {_fmt_run('ours', ours)}"
    if hf is not None:
        line += f" | {_fmt_run('HF', hf)} | ratio {ours.output_tok_s / hf.output_tok_s:.2f}x"
    print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-len", type=parse_range, default=(32, 512), help="LO:HI prompt tokens (uniform)")
    p.add_argument("--output-len", type=parse_range, default=(32, 256), help="LO:HI output tokens (uniform)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N, for both engines (default: auto, "
                                                  "the GPU when there is one)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="default: the device's (CPU 64, CUDA 256)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens per engine step (default: the offline LLM's, 1024 on CPU, 8192 on CUDA)")
    p.add_argument("--kv-cache-memory", default=None, help="default: the device's (CPU 2GiB, CUDA sized from "
                                                          "free memory)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="for both engines: the comparison is always at one precision (auto: what our engine "
                        "picks here, bf16 on CPUs with AMX-BF16, else fp32)")
    p.add_argument("--quantization", default=None,
                   help="our engine only: int8 | int4 | w8a8 (transformers stays at --dtype, so the ratio then "
                        "measures quantization too)")
    p.add_argument("--quant-group-size", type=int, default=None)
    p.add_argument("--quant-skip", default=None)
    p.add_argument("--skip-hf", action="store_true", help="run only our engine")
    p.add_argument("--json", type=Path, help="write all figures here")
    args = p.parse_args(argv)
    args.device = str(resolve_device(args.device))
    args.dtype = str(resolve_dtype(args.dtype, args.device)).removeprefix("torch.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = num_cores()
    torch.set_num_threads(threads)
    report: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "threads": threads, "torch": torch.__version__, "loadavg_start": os.getloadavg()}

    llm, load_s = load_ours(args, threads)
    vocab = llm.engine.model_config.vocab_size
    workload = make_workload(args.num_requests, args.input_len, args.output_len, vocab, args.seed)
    print(f"workload: {len(workload)} requests, {sum(len(r.prompt_token_ids) for r in workload)} prompt tokens, "
          f"{sum(r.output_len for r in workload)} output tokens, seed {args.seed}; {threads} threads; {args.dtype} "
          f"on {args.device}",
          flush=True)
    print(f"ours: model loaded in {load_s:.2f} s", flush=True)
    run_ours(llm, make_workload(2, (16, 16), (4, 4), vocab, args.seed + 2))  # warm-up
    ours_runs = [run_ours(llm, workload) for _ in range(args.repeats)]
    for i, run in enumerate(ours_runs):
        print_repeat(i, run, None)
    rss_after_ours = peak_rss_mib()
    b1 = batch1_decode_tok_s(llm, vocab, args.seed)
    rss_before_hf = peak_rss_mib()
    print(f"ours: batch-1 decode {median(b1):.1f} tok/s (trials {', '.join(f'{r:.1f}' for r in b1)})", flush=True)
    report["ours"] = {"load_seconds": load_s, "runs": [r.summary() for r in ours_runs]}
    report["rss_mib"] = {"peak_after_ours": rss_after_ours, "peak_before_hf": rss_before_hf,
                         "current_before_hf": current_rss_mib()}

    hf_runs: list[RunResult] = []
    if not args.skip_hf:
        hf_runs = _run_hf_phase(args, workload, report)
        for i, (ours, hf) in enumerate(zip(ours_runs, hf_runs, strict=True)):
            print_repeat(i, ours, hf)
        report["agreement"] = agreement(ours_runs[0].outputs, hf_runs[0].outputs)

    _roofline(llm, b1, report)
    # Other work on the machine skews every figure; the load average says how much there was.
    report["loadavg_end"] = os.getloadavg()
    _print_summary(report, ours_runs, hf_runs)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


def _run_hf_phase(args: argparse.Namespace, workload: list[BenchRequest], report: dict[str, Any]) -> list[RunResult]:
    model, load_s = load_hf(args.dtype, args.device)
    print(f"HF: model loaded in {load_s:.2f} s; static batches of {args.hf_batch_size}, each generating its "
          "longest output length; only each request's own output length counts as output tokens", flush=True)
    run_hf(model, make_workload(2, (16, 16), (4, 4), model.config.vocab_size, args.seed + 2), 2)  # warm-up
    runs = []
    for _ in range(args.repeats):
        runs.append(run_hf(model, workload, args.hf_batch_size))
        print(f"HF: {_fmt_run('run', runs[-1])}; {runs[-1].computed_output_tokens} tokens computed", flush=True)
    report["hf"] = {"load_seconds": load_s, "batch_size": args.hf_batch_size, "runs": [r.summary() for r in runs]}
    report["rss_mib"]["peak_after_hf"] = peak_rss_mib()
    return runs


def _roofline(llm: LLM, b1: list[float], report: dict[str, Any]) -> None:
    # Measured last so its two 512 MiB buffers do not inflate the peak RSS figures above.
    device = llm.engine.device
    bandwidth = measure_copy_bandwidth(2048 if device.type == "cuda" else 512, device=device)
    nbytes = decode_bytes_per_step(llm)
    report["batch1"] = {
        "prompt_len": B1_PROMPT_LEN, "output_len": B1_OUTPUT_LEN, "decode_tok_s_trials": b1,
        "decode_tok_s": median(b1), "bandwidth_gb_s": bandwidth / 1e9, "bytes_per_step": nbytes,
        "roofline_tok_s": bandwidth / nbytes["weights"],
        "roofline_with_kv_tok_s": bandwidth / (nbytes["weights"] + nbytes["kv_at_mid_context"]),
    }


def _print_summary(report: dict[str, Any], ours: list[RunResult], hf: list[RunResult]) -> None:
    print("\n=== summary ===")
    ours_out = median([r.output_tok_s for r in ours])
    label = "median " if len(ours) > 1 else ""
    print(f"ours {label}throughput: {ours_out:.1f} output tok/s, "
          f"{median([r.total_tok_s for r in ours]):.1f} total tok/s (load {report['ours']['load_seconds']:.2f} s)")
    if hf:
        hf_out = median([r.output_tok_s for r in hf])
        ratios = [o.output_tok_s / h.output_tok_s for o, h in zip(ours, hf, strict=True)]
        report["ratio_output_tok_s"] = ratios
        print(f"HF   {label}throughput: {hf_out:.1f} output tok/s (useful tokens only), "
              f"{median([r.total_tok_s for r in hf]):.1f} total tok/s (load {report['hf']['load_seconds']:.2f} s)")
        print(f"ratio ours/HF (output tok/s): {median(ratios):.2f}x")
        agree = report["agreement"]
        print(f"greedy agreement: {agree['identical_requests']}/{agree['requests']} identical outputs, "
              f"mean matching prefix {agree['mean_matching_prefix']:.1%}")
    b1 = report["batch1"]
    nbytes = b1["bytes_per_step"]
    print(f"batch-1 decode: {b1['decode_tok_s']:.1f} tok/s vs roofline {b1['roofline_tok_s']:.1f} tok/s "
          f"({b1['decode_tok_s'] / b1['roofline_tok_s']:.0%}); copy bandwidth {b1['bandwidth_gb_s']:.1f} GB/s, "
          f"{nbytes['weights'] / 1e6:.0f} MB of weights per step; with the KV read at context "
          f"{nbytes['mid_context']} (+{nbytes['kv_at_mid_context'] / 1e6:.1f} MB): "
          f"{b1['roofline_with_kv_tok_s']:.1f} tok/s")
    print(f"  bytes accounted: {nbytes['accounting']}")
    rss = report["rss_mib"]
    line = f"peak RSS: {rss['peak_after_ours']:.0f} MiB after our run, {rss['peak_before_hf']:.0f} MiB before HF"
    if "peak_after_hf" in rss:
        line += f", {rss['peak_after_hf']:.0f} MiB after HF"
    print(line)
    print(f"1-min load average: {report['loadavg_start'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end "
          f"({report['threads']} cores; above that, other work competed with the benchmark)")


if __name__ == "__main__":
    main()
