"""Cold start of `llmserve serve`: seconds from process start to /health 200, and whether the first
request is as fast as the tenth. The baseline in the same run is the same server with --no-warmup.

    python benchmarks/serve_startup.py [--repeats 3] [server args...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_latency import ServerProcess  # noqa: E402

HEALTH_TARGET_S = 3.0
REQUEST = {"messages": [{"role": "user", "content": "Write one sentence about the sea."}], "max_tokens": 16,
           "temperature": 0, "ignore_eos": True}


def request_latency(url: str) -> float:
    body = json.dumps(REQUEST).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", body, {"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        reply = json.loads(resp.read())
    assert reply["usage"]["completion_tokens"] == REQUEST["max_tokens"], reply
    return time.perf_counter() - start


def one_start(server_args: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    server = ServerProcess.start(server_args)
    try:
        server.wait_ready(poll_s=0.01)
        healthy = time.perf_counter() - started  # from before the process was spawned
        latencies = [request_latency(server.url) for _ in range(10)]
    finally:
        server.stop()
    return {"healthy_s": healthy, "first_request_s": latencies[0],
            "later_requests_median_s": statistics.median(latencies[1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args, server_args = parser.parse_known_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"warm-up": [], "no warm-up": []}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        runs["warm-up"].append(one_start(server_args))
        runs["no warm-up"].append(one_start([*server_args, "--no-warmup"]))
    report = {}
    print(f"\n{'':12} {'health 200':>11} {'1st request':>12} {'2nd-10th median':>16} {'1st / later':>12}")
    for name, results in runs.items():
        medians = {key: statistics.median(r[key] for r in results) for key in results[0]}
        medians["first_over_later"] = medians["first_request_s"] / medians["later_requests_median_s"]
        report[name] = {"runs": results, "median": medians}
        print(f"{name:12} {medians['healthy_s']:10.2f}s {medians['first_request_s'] * 1000:10.0f}ms "
              f"{medians['later_requests_median_s'] * 1000:14.0f}ms {medians['first_over_later']:11.2f}x")
    healthy = report["warm-up"]["median"]["healthy_s"]
    print(f"{'PASS' if healthy <= HEALTH_TARGET_S else 'FAIL'}: /health 200 after {healthy:.2f} s "
          f"(median of {args.repeats}) <= {HEALTH_TARGET_S:.0f} s")
    print(json.dumps({"benchmark": "serve_startup", "server_args": server_args, **report}))
    return 0 if healthy <= HEALTH_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
