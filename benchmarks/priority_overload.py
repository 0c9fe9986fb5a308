"""Service classes under overload: the same seeded workload at about 2x capacity, FCFS against classes.

A mix of 10% p0, 30% p1 and 60% p3 requests arrives (Poisson) at `--overload` times the server's
capacity, measured first with a burst under FCFS. The server runs once with
`--scheduling-policy fcfs` and once with `classes`, with the same flags otherwise (queue limit,
service-class targets). Per class it reports p50/p99 TTFT and SLO attainment (a request meets its
class's TTFT and E2E targets; a refused or failed one does not), and the total output throughput.

Target: with classes, p0's p99 TTFT is within its target and >= 99% of p0 requests meet it, where
FCFS misses; total output throughput within 10% of FCFS. Targets come from the --service-classes
file (default: benchmarks/service_classes_cpu.toml, the default tiers scaled to this CPU).

    python benchmarks/priority_overload.py [--repeats 3] [--num-prompts 240] [server args...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_latency import json_safe, running_server  # noqa: E402
from llmserve.bench.datasets import DatasetSpec  # noqa: E402
from llmserve.bench.runner import BenchConfig, BenchRun, run_bench  # noqa: E402
from llmserve.bench.slo import SLO  # noqa: E402
from llmserve.bench.stats import metric_values, percentile  # noqa: E402
from llmserve.bench.workload import parse_length  # noqa: E402
from llmserve.service_classes import ServiceClasses  # noqa: E402

HERE = Path(__file__).resolve().parent
MIX = {0: 0.1, 1: 0.3, 3: 0.6}
POLICIES = ("fcfs", "classes")
P0_ATTAINMENT_TARGET = 0.99
THROUGHPUT_RATIO_TARGET = 0.90


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=240)
    parser.add_argument("--calibration-prompts", type=int, default=48)
    parser.add_argument("--overload", type=float, default=2.0, help="arrival rate / measured capacity")
    parser.add_argument("--input-len", default="64:192")
    parser.add_argument("--output-len", default="32:96")
    parser.add_argument("--service-classes", default=str(HERE / "service_classes_cpu.toml"))
    parser.add_argument("--max-queued-requests", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    return parser.parse_known_args(argv)


def dataset(args: argparse.Namespace, num: int) -> DatasetSpec:
    return DatasetSpec(kind="random", num_prompts=num, input_len=parse_length(args.input_len),
                       output_len=parse_length(args.output_len), vocab_size=49152, seed=args.seed)


def server_args(args: argparse.Namespace, policy: str, extra: list[str], queue_limit: bool = True) -> list[str]:
    limit = ["--max-queued-requests", str(args.max_queued_requests)] if queue_limit else []
    return ["--scheduling-policy", policy, "--service-classes", args.service_classes, *limit, *extra]


def bench(url: str, spec: DatasetSpec, rate: float, seed: int) -> BenchRun:
    config = BenchConfig(url=url, dataset=spec, request_rate=rate, priority_mix=MIX, seed=seed,
                         extra_body={"ignore_eos": True})
    return asyncio.run(run_bench(config))


def capacity(args: argparse.Namespace, extra: list[str]) -> float:
    """Requests/s the server completes when it always has work (a burst, FCFS, no queue limit)."""
    with running_server(server_args(args, "fcfs", extra, queue_limit=False)) as url:
        bench(url, dataset(args, 8), float("inf"), args.seed + 1)  # first-use costs out of the figure
        run = bench(url, dataset(args, args.calibration_prompts), float("inf"), args.seed)
    return run.summary.request_throughput


def class_figures(run: BenchRun, classes: ServiceClasses) -> dict[str, dict[str, Any]]:
    figures = {}
    for rank in sorted(MIX):
        cls = classes[rank]
        members = [r for r in run.results if r.priority == rank]
        done = [r for r in members if r.ok]
        ttfts = metric_values(done, "ttft")
        targets = {k: v for k, v in (("ttft", cls.ttft_target), ("e2el", cls.e2e_target)) if v is not None}
        met = sum(SLO(targets).met_by(r) for r in members) if targets else None
        figures[cls.name] = {
            "sent": len(members), "completed": len(done),
            "refused_429": sum(r.status == 429 for r in members),
            "ttft_p50_ms": percentile(ttfts, 50) * 1000 if ttfts else None,
            "ttft_p99_ms": percentile(ttfts, 99) * 1000 if ttfts else None,
            "ttft_target_ms": None if cls.ttft_target is None else cls.ttft_target * 1000,
            "slo_attainment": None if met is None else met / len(members) if members else None,
        }
    return figures


def run_policy(args: argparse.Namespace, policy: str, rate: float, extra: list[str],
               classes: ServiceClasses) -> dict[str, Any]:
    with running_server(server_args(args, policy, extra)) as url:
        bench(url, dataset(args, 8), float("inf"), args.seed + 1)
        run = bench(url, dataset(args, args.num_prompts), rate, args.seed)
    return {"policy": policy, "output_throughput": run.summary.output_throughput,
            "completed": run.summary.completed, "duration_s": run.duration_s,
            "classes": class_figures(run, classes)}


def show(result: dict[str, Any]) -> None:
    print(f"  {result['policy']:<8} {result['output_throughput']:7.1f} output tok/s, "
          f"{result['completed']} completed in {result['duration_s']:.1f} s")
    for name, c in result["classes"].items():
        p50, p99 = c["ttft_p50_ms"], c["ttft_p99_ms"]
        attain = "n/a" if c["slo_attainment"] is None else f"{c['slo_attainment']:.1%}"
        ttft = "   -" if p50 is None else f"{p50:7.0f} / {p99:7.0f} ms"
        print(f"    {name}: sent {c['sent']:3d}, refused {c['refused_429']:3d}, TTFT p50/p99 {ttft}, "
              f"SLO attainment {attain}")


def verdict(repeats: list[dict[str, dict[str, Any]]]) -> tuple[bool, list[str]]:
    p0 = [r["classes"]["classes"]["p0"] for r in repeats]
    fcfs_p0 = [r["fcfs"]["classes"]["p0"] for r in repeats]
    ratio = statistics.median(r["classes"]["output_throughput"] / r["fcfs"]["output_throughput"] for r in repeats)
    attain = statistics.median(c["slo_attainment"] for c in p0)
    fcfs_attain = statistics.median(c["slo_attainment"] for c in fcfs_p0)
    p99 = statistics.median(c["ttft_p99_ms"] for c in p0)
    target = p0[0]["ttft_target_ms"]
    checks = [
        (p99 <= target, f"classes: p0 p99 TTFT {p99:.0f} ms against a {target:.0f} ms target (median of runs)"),
        (attain >= P0_ATTAINMENT_TARGET, f"classes: p0 SLO attainment {attain:.1%} (target >= 99%)"),
        (fcfs_attain < P0_ATTAINMENT_TARGET, f"fcfs: p0 SLO attainment {fcfs_attain:.1%} (it should miss)"),
        (ratio >= THROUGHPUT_RATIO_TARGET, f"output throughput classes/fcfs {ratio:.2f} (target >= 0.90)"),
    ]
    return all(ok for ok, _ in checks), [("PASS " if ok else "MISS ") + line for ok, line in checks]


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    classes = ServiceClasses.from_file(args.service_classes)
    cap = capacity(args, extra)
    rate = args.overload * cap
    print(f"capacity {cap:.2f} req/s; offering {rate:.2f} req/s ({args.overload:g}x), mix "
          + ", ".join(f"p{k}={v:.0%}" for k, v in MIX.items()), flush=True)
    repeats = []
    for index in range(args.repeats):
        print(f"repeat {index + 1}/{args.repeats}", flush=True)
        repeat = {}
        for policy in POLICIES:  # alternated within a repeat, so drift hits both alike
            repeat[policy] = run_policy(args, policy, rate, extra, classes)
            show(repeat[policy])
        repeats.append(repeat)
    passed, lines = verdict(repeats)
    print("\n".join(lines))
    if args.out:
        report = {"capacity_req_s": cap, "rate_req_s": rate, "args": vars(args) | {"out": str(args.out)},
                  "server_args": extra, "repeats": repeats, "verdict": lines}
        args.out.write_text(json.dumps(json_safe(report), indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
