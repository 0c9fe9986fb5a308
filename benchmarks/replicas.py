"""Replicas on Ray Serve against the single-process server, and prefix-aware routing against Ray's default.

Every figure comes from servers started by this script in the same run, one at a time, each driven
by the bench CLI itself (`llmserve bench serve`):

1. The front's cost: a light paced load (Poisson, 1 request/s, 128-token prompts, 32-token answers)
   and the offline workload sent at once (64 requests, input 32:512, output 32:256, EOS ignored), on
   the single-process server, `--replicas 1` (its engine adapts its threads, up to every core, as
   the single server's does) and `--replicas 2 --threads-per-replica 1`. Targets: one replica
   within 5 ms of the single server's median TTFT (light load) and within 5% of its throughput
   (the burst).
2. Routing: the bench's shared-prefix workload with several distinct prefixes, on 2 replicas x 1
   thread with our prefix-aware router and with Ray Serve's default (`--replica-router pow2`), and
   on one replica as the hit-rate reference. The prefix-cache hit rate (prompt tokens found
   cached over those looked up) comes from each server's /metrics, before and after the workload.
   Targets: the hit rate within 10% of one replica's, and a lower mean TTFT than default routing.

    python benchmarks/replicas.py [--repeats 3] [--num-prompts 64] [--out replicas.json] [server args...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_latency import bench_cli_summary, json_safe, running_server  # noqa: E402

# One replica adapts its threads to the free cores (up to 2 here), as the single server does.
ONE_REPLICA = ["--replicas", "1"]
REPLICAS_2X1 = ["--replicas", "2", "--threads-per-replica", "1"]
COST_MODES = {"single process": [], "1 replica": ONE_REPLICA, "2 replicas x 1 thread": REPLICAS_2X1}
ROUTING_MODES = {"prefix routing, 2x1": REPLICAS_2X1, "Ray default, 2x1": [*REPLICAS_2X1, "--replica-router", "pow2"],
                 "one replica": ONE_REPLICA}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=64, help="the burst and the shared-prefix workload")
    parser.add_argument("--light-prompts", type=int, default=30, help="requests of the paced light load")
    parser.add_argument("--num-prefixes", type=int, default=4)
    parser.add_argument("--prefix-len", type=int, default=512)
    parser.add_argument("--prefix-rate", default="2", help="requests/s (Poisson) of the shared-prefix workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="cost,routing", help="which parts to run: cost, routing or both")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    return parser.parse_known_args(argv)


def prefix_cache_tokens(url: str) -> tuple[float, float]:
    """(looked up, found) prompt tokens, summed over every replica's series."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    totals = {"queries": 0.0, "hits": 0.0}
    for line in text.splitlines():
        for kind in totals:
            if line.startswith(f"llmserve:prefix_cache_{kind}_total"):
                totals[kind] += float(line.rpartition(" ")[2])
    return totals["queries"], totals["hits"]


def warm(url: str, seed: int) -> None:
    """First-use costs paid on prompts that share no prefix with the timed workloads."""
    bench_cli_summary(url, seed + 99,
                      ["--dataset", "random", "--num-prompts", "4", "--input-len", "32", "--output-len", "4"])


def run_cost(args: argparse.Namespace, flags: list[str], extra: list[str]) -> dict[str, Any]:
    with running_server([*flags, *extra]) as url:
        warm(url, args.seed)
        light = bench_cli_summary(url, args.seed, ["--dataset", "random", "--num-prompts", str(args.light_prompts),
                                                   "--input-len", "128", "--output-len", "32", "--request-rate", "1"])
        burst = bench_cli_summary(url, args.seed + 1, ["--dataset", "random", "--num-prompts", str(args.num_prompts),
                                                       "--input-len", "32:512", "--output-len", "32:256"])
    return {"light_ttft_median_ms": light["ttft"]["median"] * 1000, "light_tpot_median_ms": light["tpot"]["median"]
            * 1000, "burst_output_throughput": burst["output_throughput"],
            "failed": light["failed"] + burst["failed"]}


def run_routing(args: argparse.Namespace, flags: list[str], extra: list[str]) -> dict[str, Any]:
    with running_server([*flags, *extra]) as url:
        warm(url, args.seed)
        queries, hits = prefix_cache_tokens(url)
        shared = ["--dataset", "shared-prefix", "--num-prefixes", str(args.num_prefixes), "--prefix-len",
                  str(args.prefix_len), "--num-prompts", str(args.num_prompts), "--input-len", "16:64",
                  "--output-len", "32", "--request-rate", args.prefix_rate]
        summary = bench_cli_summary(url, args.seed + 2, shared)
        after_queries, after_hits = prefix_cache_tokens(url)
    looked_up = after_queries - queries
    return {"hit_rate": (after_hits - hits) / looked_up if looked_up else 0.0,
            "ttft_mean_ms": summary["ttft"]["mean"] * 1000, "ttft_p99_ms": summary["ttft"]["p99"] * 1000,
            "failed": summary["failed"]}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    report: dict[str, Any] = {"benchmark": "replicas", "args": vars(args), "server_args": extra, "repeats": []}
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        parts = args.parts.split(",")
        cost = {mode: run_cost(args, flags, extra) for mode, flags in COST_MODES.items()} if "cost" in parts else {}
        routing = ({mode: run_routing(args, flags, extra) for mode, flags in ROUTING_MODES.items()}
                   if "routing" in parts else {})
        for mode, r in cost.items():
            print(f"  {mode:<24} light: TTFT median {r['light_ttft_median_ms']:7.1f} ms, TPOT median "
                  f"{r['light_tpot_median_ms']:6.1f} ms | burst: {r['burst_output_throughput']:6.1f} output tok/s "
                  f"| {r['failed']} failed", flush=True)
        for mode, r in routing.items():
            print(f"  {mode:<24} prefix-cache hit rate {r['hit_rate']:6.1%}, TTFT mean {r['ttft_mean_ms']:7.1f} ms, "
                  f"p99 {r['ttft_p99_ms']:7.1f} ms | {r['failed']} failed", flush=True)
        report["repeats"].append({"cost": cost, "routing": routing})
    summarize(report)
    if args.out is not None:
        args.out.write_text(json.dumps(json_safe(report), indent=2))
    return 0


def summarize(report: dict[str, Any]) -> None:
    costs = [r["cost"] for r in report["repeats"] if r["cost"]]
    routes = [r["routing"] for r in report["repeats"] if r["routing"]]
    report["summary"] = {}
    if costs:
        summarize_cost(report, costs)
    if routes:
        summarize_routing(routes)


def summarize_cost(report: dict[str, Any], costs: list[dict[str, Any]]) -> None:
    single = [c["single process"] for c in costs]
    one = [c["1 replica"] for c in costs]
    two = [c["2 replicas x 1 thread"] for c in costs]
    ttft_cost = median_of(one, "light_ttft_median_ms") - median_of(single, "light_ttft_median_ms")
    throughput = median_of(one, "burst_output_throughput") / median_of(single, "burst_output_throughput")
    print(f"front cost (1 replica against the single server, medians): TTFT {ttft_cost:+.1f} ms (target <= +5), "
          f"throughput {throughput:.3f}x (target >= 0.95)")
    spread = median_of(two, "burst_output_throughput") / median_of(single, "burst_output_throughput")
    print(f"2 replicas x 1 thread: {spread:.3f}x the single server's burst throughput")
    report["summary"] = {"ttft_cost_ms": ttft_cost, "throughput_ratio": throughput, "two_replicas_ratio": spread}


def summarize_routing(routes: list[dict[str, Any]]) -> None:
    prefix = [r["prefix routing, 2x1"] for r in routes]
    default = [r["Ray default, 2x1"] for r in routes]
    reference = [r["one replica"] for r in routes]
    print(f"hit rate: prefix routing {median_of(prefix, 'hit_rate'):.1%}, "
          f"Ray default {median_of(default, 'hit_rate'):.1%}, one replica {median_of(reference, 'hit_rate'):.1%} "
          "(target: prefix routing within 10% of one replica)")
    print(f"mean TTFT: prefix routing {median_of(prefix, 'ttft_mean_ms'):.1f} ms, Ray default "
          f"{median_of(default, 'ttft_mean_ms'):.1f} ms (target: lower with prefix routing)")


if __name__ == "__main__":
    sys.exit(main())
