"""Prefix caching on against off: one long system prompt shared by many short questions.

Each repeat starts a server with prefix caching (the default) and one with `--no-prefix-caching`,
same flags otherwise, and sends both the same seeded workload with the bench CLI itself:
`llmserve bench serve --dataset shared-prefix` (default: a 1,000-token prefix, 64 questions of
16-64 tokens, 32-token answers, Poisson at 1 request/s, which the server sustains either way).
Before it, two requests with unrelated prompts pay the server's first-use costs, so the cache
starts cold. Then the same number of questions on a new prefix arrive at once, for throughput.
It prints mean and p99 TTFT and throughput of both and their ratio, per repeat and the median.

Target: mean TTFT at least 5x lower with caching.

    python benchmarks/prefix_caching.py [--repeats 3] [--request-rate 1] [server args...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_latency import bench_cli_summary, json_safe, running_server  # noqa: E402

TTFT_RATIO_TARGET = 5.0
MODES = {"cache on": [], "cache off": ["--no-prefix-caching"]}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--prefix-len", type=int, default=1000)
    parser.add_argument("--input-len", default="16:64", help="the question after the prefix")
    parser.add_argument("--output-len", default="32")
    parser.add_argument("--request-rate", default="1", help="requests/s (Poisson), or inf for a burst")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    return parser.parse_known_args(argv)


def run_mode(args: argparse.Namespace, flags: list[str], extra: list[str]) -> dict[str, Any]:
    shared = ["--dataset", "shared-prefix", "--num-prompts", str(args.num_prompts), "--prefix-len",
              str(args.prefix_len), "--input-len", args.input_len, "--output-len", args.output_len]
    with running_server([*flags, *extra]) as url:
        # Random ids share no prefix with the timed workloads.
        warm_up = ["--dataset", "random", "--num-prompts", "2", "--input-len", "32", "--output-len", "4"]
        bench_cli_summary(url, args.seed + 99, warm_up)
        paced = bench_cli_summary(url, args.seed, [*shared, "--request-rate", args.request_rate])
        burst = bench_cli_summary(url, args.seed + 1, shared)  # another seed: another prefix
    return {"completed": paced["completed"] + burst["completed"], "failed": paced["failed"] + burst["failed"],
            "ttft_mean_ms": paced["ttft"]["mean"] * 1000, "ttft_p99_ms": paced["ttft"]["p99"] * 1000,
            "e2el_mean_ms": paced["e2el"]["mean"] * 1000, "burst_ttft_mean_ms": burst["ttft"]["mean"] * 1000,
            "output_throughput": burst["output_throughput"], "total_token_throughput": burst["total_token_throughput"],
            "burst_duration_s": burst["duration_s"]}


def show(mode: str, r: dict[str, Any]) -> None:
    print(f"  {mode:<9} paced: TTFT mean {r['ttft_mean_ms']:7.1f} ms, p99 {r['ttft_p99_ms']:7.1f} ms, "
          f"E2E mean {r['e2el_mean_ms']:7.1f} ms | burst: {r['output_throughput']:6.1f} output tok/s, "
          f"{r['total_token_throughput']:7.1f} total tok/s, TTFT mean {r['burst_ttft_mean_ms']:7.1f} ms | "
          f"{r['completed']} completed, {r['failed']} failed", flush=True)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    repeats = []
    for index in range(args.repeats):
        print(f"repeat {index + 1}/{args.repeats}", flush=True)
        repeat = {}
        for mode, flags in MODES.items():  # alternated within a repeat, so drift hits both alike
            repeat[mode] = run_mode(args, flags, extra)
            show(mode, repeat[mode])
        on, off = repeat["cache on"], repeat["cache off"]
        repeat["ttft_ratio"] = off["ttft_mean_ms"] / on["ttft_mean_ms"]
        repeat["burst_ttft_ratio"] = off["burst_ttft_mean_ms"] / on["burst_ttft_mean_ms"]
        repeat["throughput_ratio"] = on["output_throughput"] / off["output_throughput"]
        print(f"  mean TTFT off/on: paced {repeat['ttft_ratio']:.1f}x, burst {repeat['burst_ttft_ratio']:.1f}x; "
              f"burst output throughput on/off {repeat['throughput_ratio']:.2f}x", flush=True)
        repeats.append(repeat)
    ttft_ratio = statistics.median(r["ttft_ratio"] for r in repeats)
    burst_ratio = statistics.median(r["burst_ttft_ratio"] for r in repeats)
    throughput_ratio = statistics.median(r["throughput_ratio"] for r in repeats)
    passed = ttft_ratio >= TTFT_RATIO_TARGET
    print(f"{'PASS' if passed else 'MISS'} median mean-TTFT ratio off/on {ttft_ratio:.1f}x paced "
          f"(target >= {TTFT_RATIO_TARGET:g}x), {burst_ratio:.1f}x in the burst; median burst output throughput "
          f"on/off {throughput_ratio:.2f}x")
    if args.out:
        report = {"args": vars(args) | {"out": str(args.out)}, "server_args": extra, "repeats": repeats,
                  "ttft_ratio_median": ttft_ratio, "throughput_ratio_median": throughput_ratio}
        args.out.write_text(json.dumps(json_safe(report), indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
