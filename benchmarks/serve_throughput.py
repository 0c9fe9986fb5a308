"""Served vs. offline throughput: the offline benchmark's workload, sent all at once over HTTP.

Target: served output tok/s >= 90% of the offline engine's on the same workload in the same run.
The workload and engine settings default to benchmarks/offline_throughput.py's (64 requests,
input 32:512, output 32:256 tokens, greedy, EOS ignored, fp32). Each repeat first runs the offline
engine in this process and frees it, then starts `llmserve serve` and sends every request at t=0
as token ids to /v1/completions (streaming); the two never run at the same time. Unknown
arguments go to the server.

    python benchmarks/serve_throughput.py [--repeats 3] [--num-requests 64] [server args...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import torch  # noqa: E402

from benchmarks import offline_throughput as offline  # noqa: E402
from benchmarks.common import current_rss_mib, make_workload, num_cores, parse_range  # noqa: E402
from benchmarks.serve_latency import (  # noqa: E402
    ServerFailed,
    json_safe,
    model_name,
    running_server,
    short_requests,
    warm_up,
)
from llmserve.bench.client import run_load  # noqa: E402
from llmserve.bench.stats import summarize, wall_duration  # noqa: E402
from llmserve.bench.workload import random_requests  # noqa: E402
from llmserve.llm import OFFLINE_MAX_NUM_BATCHED_TOKENS  # noqa: E402

TARGET_RATIO = 0.90


@dataclass
class Phase:
    seconds: float
    output_tokens: int
    prompt_tokens: int
    ok: bool = True  # every request completed with exactly its output length
    note: str = ""
    health_p50_ms: float | None = None  # GET /health latency while the load ran (served only)
    health_max_ms: float | None = None

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "output_tok_s": self.output_tok_s}


def run_offline(args: argparse.Namespace, threads: int) -> tuple[Phase, int]:
    """Offline engine on the workload; returns the phase and the model's vocabulary size."""
    llm, load_s = offline.load_ours(args, threads)
    vocab = llm.engine.model_config.vocab_size
    offline.run_ours(llm, make_workload(2, (16, 16), (4, 4), vocab, args.seed + 2))  # warm-up, as offline does
    workload = make_workload(args.num_requests, args.input_len, args.output_len, vocab, args.seed)
    run = offline.run_ours(llm, workload)  # raises if any request got a different length
    del llm
    gc.collect()  # free the weights and KV pool before the server loads its own copy
    print(f"offline: {run.output_tok_s:.1f} output tok/s ({run.seconds:.1f} s, load {load_s:.1f} s); "
          f"RSS after freeing the engine {current_rss_mib():.0f} MiB", flush=True)
    return Phase(run.seconds, run.output_tokens, run.prompt_tokens), vocab


def run_served(args: argparse.Namespace, server_args: list[str], vocab: int) -> Phase:
    requests = random_requests(args.num_requests, args.input_len, args.output_len, vocab, args.seed)
    with running_server(engine_flags(args) + server_args) as url:
        model = model_name(url, args.served_model_name)
        warm_up(url, model, vocab, args.seed)
        results, health = asyncio.run(load_with_health_probe(url, model, requests))
    summary = summarize(results, wall_duration(results))
    phase = Phase(summary.duration_s, summary.output_tokens, summary.prompt_tokens,
                  health_p50_ms=1000 * statistics.median(health), health_max_ms=1000 * max(health))
    print(f"served: GET /health during the load: median {phase.health_p50_ms:.1f} ms, max "
          f"{phase.health_max_ms:.1f} ms over {len(health)} probes", flush=True)
    short = short_requests(requests, results)
    if summary.failed or short:
        phase.ok = False
        phase.note = f"{summary.failed} failed {summary.errors_by_status}, {short} with the wrong length"
        print(f"served: {phase.note}; first errors: {summary.first_errors}", flush=True)
    print(f"served: {phase.output_tok_s:.1f} output tok/s ({phase.seconds:.1f} s); TTFT median "
          f"{summary.ttft.median:.2f} s, TPOT median {summary.tpot.median * 1000:.1f} ms", flush=True)
    return phase


async def load_with_health_probe(url: str, model: str, requests: list) -> tuple[list, list[float]]:
    """The load, all sent at t=0, while /health is timed every 100 ms: is the event loop free?"""
    done = asyncio.Event()
    latencies: list[float] = []

    async def probe() -> None:
        async with aiohttp.ClientSession() as session:
            while not done.is_set():
                start = time.perf_counter()
                async with session.get(url + "/health") as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.1)

    prober = asyncio.create_task(probe())
    results = await run_load(url, model, requests, [0.0] * len(requests))
    done.set()
    await prober
    return results, latencies


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The offline engine's settings, so the server runs the same configuration (server args may override)."""
    flags = ["--dtype", args.dtype, "--device", args.device, "--seed", str(args.seed)]
    batched = args.max_num_batched_tokens  # None: what the offline LLM takes on this device
    if batched is None and args.device == "cpu":
        batched = OFFLINE_MAX_NUM_BATCHED_TOKENS
    for flag, value in (("--max-num-seqs", args.max_num_seqs), ("--max-num-batched-tokens", batched),
                        ("--kv-cache-memory", args.kv_cache_memory), ("--quantization", args.quantization),
                        ("--quant-group-size", args.quant_group_size), ("--quant-skip", args.quant_skip)):
        flags += [flag, str(value)] if value is not None else []
    return flags


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    base = offline.parse_args([])  # the offline benchmark's defaults define the workload
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--num-requests", "--num-prompts", dest="num_requests", type=int, default=base.num_requests)
    p.add_argument("--input-len", type=parse_range, default=base.input_len, help="LO:HI prompt tokens")
    p.add_argument("--output-len", type=parse_range, default=base.output_len, help="LO:HI output tokens")
    p.add_argument("--seed", type=int, default=base.seed)
    p.add_argument("--device", default=base.device, help="auto | cpu | cuda | cuda:N, for both (default: auto)")
    p.add_argument("--max-num-seqs", type=int, default=base.max_num_seqs)
    p.add_argument("--max-num-batched-tokens", type=int, default=base.max_num_batched_tokens)
    p.add_argument("--kv-cache-memory", default=base.kv_cache_memory)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=base.dtype)
    p.add_argument("--quantization", default=None, help="int8 | int4 | w8a8, for the offline engine and the server")
    p.add_argument("--quant-group-size", type=int, default=None)
    p.add_argument("--quant-skip", default=None)
    p.add_argument("--served-model-name", help="the requests' model field (default: first of GET /v1/models)")
    p.add_argument("--repeats", type=int, default=1, help="offline then served, N times; medians are reported")
    args, server_args = p.parse_known_args(argv)
    return args, server_args[1:] if server_args[:1] == ["--"] else server_args


def main(argv: list[str] | None = None) -> int:
    args, server_args = parse_args(argv)
    threads = num_cores()
    torch.set_num_threads(threads)
    report: dict[str, Any] = {"benchmark": "serve_throughput", "args": vars(args), "server_args": server_args,
                              "threads": threads, "loadavg_start": os.getloadavg(), "repeats": []}
    try:
        for i in range(args.repeats):
            print(f"\n--- repeat {i + 1}/{args.repeats} ---", flush=True)
            offline_phase, vocab = run_offline(args, threads)
            time.sleep(1.0)  # let the freed memory settle before the server starts
            served_phase = run_served(args, server_args, vocab)
            ratio = served_phase.output_tok_s / offline_phase.output_tok_s
            print(f"repeat {i + 1}: served/offline = {ratio:.3f}", flush=True)
            report["repeats"].append({"offline": offline_phase.to_dict(), "served": served_phase.to_dict(),
                                      "ratio": ratio, "served_ok": served_phase.ok})
    except ServerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["loadavg_end"] = os.getloadavg()
    passed = _summarize(report)
    print(json.dumps(json_safe(report)))
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def _summarize(report: dict[str, Any]) -> bool:
    runs = report["repeats"]
    offline_tok_s = statistics.median(r["offline"]["output_tok_s"] for r in runs)
    served_tok_s = statistics.median(r["served"]["output_tok_s"] for r in runs)
    ratio = statistics.median(r["ratio"] for r in runs)
    all_ok = all(r["served_ok"] for r in runs)
    passed = ratio >= TARGET_RATIO and all_ok
    report.update(median_offline_output_tok_s=offline_tok_s, median_served_output_tok_s=served_tok_s,
                  median_ratio=ratio, passed=passed)
    label = f"median of {len(runs)}" if len(runs) > 1 else "1 run"
    print(f"\n=== summary ({label}; 1-min load average {report['loadavg_start'][0]:.2f} at start, "
          f"{report['loadavg_end'][0]:.2f} at end, {report['threads']} cores) ===")
    print(f"offline: {offline_tok_s:.1f} output tok/s")
    print(f"served:  {served_tok_s:.1f} output tok/s")
    per_repeat = ", ".join(f"{r['ratio']:.3f}" for r in runs)
    print(f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}: served/offline {ratio:.3f} >= {TARGET_RATIO:.2f} "
          f"(per repeat: {per_repeat})")
    print(f"{'PASS' if all_ok else 'FAIL'}: every served request completed with exactly its output length")
    return passed


if __name__ == "__main__":
    sys.exit(main())
