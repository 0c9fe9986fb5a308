"""The exact-match response cache on a workload where 35% of the questions were asked before.

Each repeat starts a server with `--response-cache 256MiB` and one without (same flags
otherwise) and sends both the same seeded greedy workload over HTTP with the bench's client:
`--num-prompts` requests (default 160) of 64-256 prompt tokens and 32-128 answer tokens,
Poisson at `--request-rate` (default 2/s), where 35% of the requests, at random places after
the first few, repeat an earlier question. It reports the hit rate (from each response's X-Cache
header) and p50/p99 TTFT and end-to-end latency of hits and misses, and the whole run's mean
latency and throughput against the server without the cache.

    python benchmarks/response_cache.py [--repeats 3] [--repeat-fraction 0.35] [server args...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_latency import json_safe, running_server  # noqa: E402
from llmserve.bench.datasets import DatasetSpec  # noqa: E402
from llmserve.bench.result import RequestResult  # noqa: E402
from llmserve.bench.runner import BenchConfig, run_bench  # noqa: E402
from llmserve.bench.stats import Percentiles, metric_values  # noqa: E402
from llmserve.bench.workload import BenchRequest, parse_length, random_requests  # noqa: E402

MODES = {"response cache": ["--response-cache", "256MiB"], "no cache": []}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=160)
    parser.add_argument("--repeat-fraction", type=float, default=0.35)
    parser.add_argument("--input-len", default="64:256")
    parser.add_argument("--output-len", default="32:128")
    parser.add_argument("--request-rate", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    return parser.parse_known_args(argv)


def workload(args: argparse.Namespace) -> list[BenchRequest]:
    """Fresh questions, and at randomly chosen places (after the first few) a repeat of an earlier one,
    so that exactly `repeat_fraction` of the requests are repeats."""
    rng = random.Random(args.seed)
    fresh = iter(random_requests(args.num_prompts, parse_length(args.input_len), parse_length(args.output_len),
                                 49152, args.seed))
    repeats = set(rng.sample(range(4, args.num_prompts), round(args.repeat_fraction * args.num_prompts)))
    requests: list[BenchRequest] = []
    for index in range(args.num_prompts):
        requests.append(rng.choice(requests) if index in repeats else next(fresh))
    return requests


def latencies(results: list[RequestResult]) -> dict[str, Any]:
    ttft, e2e = (Percentiles.of(metric_values(results, metric)) for metric in ("ttft", "e2el"))

    def ms(seconds: float) -> float | None:
        return None if math.isnan(seconds) else seconds * 1000

    return {"count": len(results), "ttft_p50_ms": ms(ttft.median), "ttft_p99_ms": ms(ttft.p99),
            "e2e_p50_ms": ms(e2e.median), "e2e_p99_ms": ms(e2e.p99), "e2e_mean_ms": ms(e2e.mean)}


def run_mode(args: argparse.Namespace, flags: list[str], extra: list[str],
             requests: list[BenchRequest]) -> dict[str, Any]:
    with running_server([*flags, *extra]) as url:
        warm = BenchConfig(url=url, dataset=DatasetSpec("random", 2, vocab_size=49152, seed=args.seed + 99),
                           extra_body={"temperature": 0, "ignore_eos": True})
        asyncio.run(run_bench(warm))  # first-use costs out of the figures; shares nothing with the workload
        config = BenchConfig(url=url, dataset=DatasetSpec("random", len(requests)), request_rate=args.request_rate,
                             seed=args.seed, extra_body={"temperature": 0, "ignore_eos": True})
        run = asyncio.run(run_bench(config, requests=requests))
    done = [r for r in run.results if r.ok]
    hits = [r for r in done if r.cache == "hit"]
    return {"completed": len(done), "failed": len(run.results) - len(done),
            "hit_rate": len(hits) / len(run.results), "all": latencies(done), "hits": latencies(hits),
            "misses": latencies([r for r in done if r.cache != "hit"]),
            "output_throughput": run.summary.output_throughput}


def _ms(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.0f}"


def show(mode: str, r: dict[str, Any]) -> None:
    print(f"  {mode:<14} hit rate {r['hit_rate']:5.1%}; mean E2E {_ms(r['all']['e2e_mean_ms'])} ms; "
          f"{r['output_throughput']:6.1f} output tok/s; {r['completed']} completed, {r['failed']} failed")
    for kind in ("hits", "misses"):
        f = r[kind]
        print(f"    {kind:<6} n={f['count']:3d}  TTFT p50/p99 {_ms(f['ttft_p50_ms'])} / {_ms(f['ttft_p99_ms'])} ms  "
              f"E2E p50/p99 {_ms(f['e2e_p50_ms'])} / {_ms(f['e2e_p99_ms'])} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    requests = workload(args)
    repeated = len(requests) - len({id(r) for r in requests})
    print(f"{len(requests)} requests, {repeated} repeats of earlier questions ({repeated / len(requests):.0%}), "
          f"Poisson at {args.request_rate:g}/s, greedy", flush=True)
    repeats = []
    for index in range(args.repeats):
        print(f"repeat {index + 1}/{args.repeats}", flush=True)
        repeat = {mode: run_mode(args, flags, extra, requests) for mode, flags in MODES.items()}
        for mode, result in repeat.items():
            show(mode, result)
        cached, plain = repeat["response cache"], repeat["no cache"]
        repeat["mean_e2e_ratio"] = plain["all"]["e2e_mean_ms"] / cached["all"]["e2e_mean_ms"]
        print(f"  mean E2E latency without/with the cache: {repeat['mean_e2e_ratio']:.2f}x", flush=True)
        repeats.append(repeat)
    summary = {
        "hit_rate_median": statistics.median(r["response cache"]["hit_rate"] for r in repeats),
        "hit_e2e_p50_ms_median": statistics.median(r["response cache"]["hits"]["e2e_p50_ms"] for r in repeats),
        "miss_e2e_p50_ms_median": statistics.median(r["response cache"]["misses"]["e2e_p50_ms"] for r in repeats),
        "mean_e2e_ratio_median": statistics.median(r["mean_e2e_ratio"] for r in repeats),
    }
    print(f"median of {len(repeats)}: hit rate {summary['hit_rate_median']:.1%}, E2E p50 hits "
          f"{summary['hit_e2e_p50_ms_median']:.1f} ms vs misses {summary['miss_e2e_p50_ms_median']:.0f} ms, "
          f"mean E2E without/with {summary['mean_e2e_ratio_median']:.2f}x")
    if args.out:
        report = {"args": vars(args) | {"out": str(args.out)}, "server_args": extra, "repeats": repeats,
                  "summary": summary}
        args.out.write_text(json.dumps(json_safe(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
