"""Throughput beside a busy neighbour: the offline workload quiet, then while another process spins.

The neighbour is a separate process spinning on one core (as a build, a test run or another
service would), started after the quiet runs and stopped after the busy ones. The figure that
matters is busy / quiet: with one of two cores taken, 50% is the ideal and 40% the target.

    python benchmarks/contention.py [--threads N] [--repeats 3] [--num-requests 32]

`--threads` fixes the engine's thread count (the behaviour before the adaptive default); without
it the engine adapts to the cores other processes leave free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BenchRequest, make_workload, median, num_cores, parse_range  # noqa: E402
from llmserve import LLM, SamplingParams  # noqa: E402


def run(llm: LLM, workload: list[BenchRequest]) -> float:
    """Output tokens per second over the whole workload (greedy, EOS ignored)."""
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in workload]
    params = [SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in workload]
    start = time.perf_counter()
    llm.generate(prompts, params)
    return sum(r.output_len for r in workload) / (time.perf_counter() - start)


def start_neighbour(core: int | None) -> subprocess.Popen:
    """A process that spins forever, pinned to `core` when given."""
    pin = f"import os; os.sched_setaffinity(0, {{{core}}}); " if core is not None else ""
    return subprocess.Popen([sys.executable, "-c", pin + "while True: pass"])


def measure(llm: LLM, workload: list[BenchRequest], repeats: int, label: str) -> list[float]:
    figures = []
    for i in range(repeats):
        figures.append(run(llm, workload))
        print(f"{label} repeat {i + 1}: {figures[-1]:.1f} output tok/s, "
              f"engine threads now {llm.engine.threads.threads}", flush=True)
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="fix the engine's threads (default: adaptive)")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--input-len", type=parse_range, default=(32, 512), help="LO:HI prompt tokens")
    p.add_argument("--output-len", type=parse_range, default=(32, 256), help="LO:HI output tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (the neighbour is a CPU process)")
    p.add_argument("--quantization", default=None, help="int8 | int4 | w8a8")
    p.add_argument("--pin", action="store_true", help="pin the neighbour to our last core")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    llm = LLM(model=None, dtype=args.dtype, quantization=args.quantization, num_threads=args.threads,
              kv_cache_memory="1GiB", seed=args.seed, device=args.device)
    vocab = llm.engine.model_config.vocab_size
    workload = make_workload(args.num_requests, args.input_len, args.output_len, vocab, args.seed)
    print(f"workload: {len(workload)} requests, {sum(r.output_len for r in workload)} output tokens; "
          f"{num_cores()} cores; threads {args.threads or 'adaptive'}", flush=True)
    run(llm, workload)  # warm-up: first-touch page faults of the KV pool stay out of both figures
    quiet = measure(llm, workload, args.repeats, "quiet")
    neighbour = start_neighbour(max(os.sched_getaffinity(0)) if args.pin else None)
    try:
        busy = measure(llm, workload, args.repeats, "busy neighbour")
    finally:
        neighbour.kill()
        neighbour.wait()
    ratio = median(busy) / median(quiet)
    print(f"\nquiet {median(quiet):.1f} tok/s, beside a busy neighbour {median(busy):.1f} tok/s (medians of "
          f"{args.repeats}): {ratio:.1%} of quiet throughput (target >= 40%, ideal 50%)")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "quiet": quiet, "busy": busy, "ratio": ratio,
              "loadavg_end": os.getloadavg()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
