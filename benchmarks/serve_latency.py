"""Served latency: Poisson arrivals of random-token prompts over HTTP, against the latency targets.

Default load: 40 requests at 1 request/s (Poisson), 128-token prompts sent as token ids, 128-token
answers (EOS ignored), greedy. Targets: p99 TTFT <= 0.5 s and median TPOT <= 100 ms.
The script starts `llmserve serve` itself, unless --url names a running server (ours or any
OpenAI-compatible one); unknown arguments go to the server, e.g. `--model path.gguf`.

    python benchmarks/serve_latency.py [--num-prompts 40] [--request-rate 1] [--repeats 3] [server args...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve.bench.client import first_model_id, run_load  # noqa: E402
from llmserve.bench.result import RequestResult  # noqa: E402
from llmserve.bench.stats import METRICS, Summary, summarize, wall_duration  # noqa: E402
from llmserve.bench.workload import BenchRequest, arrival_times, random_requests  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TTFT_P99_TARGET_S = 0.5
TPOT_MEDIAN_TARGET_S = 0.100
SMOLLM2_VOCAB_SIZE = 49152
HEALTH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30


class ServerFailed(RuntimeError):
    """The server under test exited or never became healthy."""


# --- the server as a subprocess (shared with serve_throughput.py) ----------------------------

@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: IO[bytes]  # stdout + stderr in a file: a pipe nobody reads would fill and stall the server

    @classmethod
    def start(cls, server_args: Sequence[str], host: str = "127.0.0.1", port: int = 0) -> ServerProcess:
        port = port or free_port(host)
        cmd = [sys.executable, "-m", "llmserve.cli", "serve", "--host", host, "--port", str(port), *server_args]
        log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; stop() closes it)
        print(f"starting server: {' '.join(cmd)}", flush=True)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        return cls(proc, f"http://{host}:{port}", log)

    def wait_ready(self, timeout_s: float = HEALTH_TIMEOUT_S, poll_s: float = 0.25) -> float:
        """Poll GET /health until 200; seconds waited. Raises ServerFailed if the server dies or times out."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited with code {self.proc.returncode} before it was ready; "
                                   f"its last output:\n{self.log_tail()}")
            if health_status(self.url) == 200:
                return time.perf_counter() - start
            time.sleep(poll_s)
        raise ServerFailed(f"the server was not healthy after {timeout_s:.0f} s; its last output:\n{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        self.log.seek(0)
        text = self.log.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL if it has not exited in time; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"warning: the server ignored SIGTERM for {timeout_s:.0f} s; killing it", file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@contextmanager
def running_server(server_args: Sequence[str], port: int = 0) -> Iterator[str]:
    """Start the server, wait until healthy, yield its base URL, and always stop it."""
    server = ServerProcess.start(server_args, port=port)
    ready = False
    try:
        waited = server.wait_ready()
        ready = True
        print(f"server healthy after {waited:.1f} s at {server.url}", flush=True)
        yield server.url
    finally:
        code = server.stop()
        if ready and code not in (0, -signal.SIGTERM):  # an early exit was already reported with its log
            print(f"warning: the server exited with code {code} on SIGTERM", file=sys.stderr)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def health_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:  # 503 while the model loads
        return exc.code
    except (urllib.error.URLError, OSError):  # not listening yet
        return None


def model_name(url: str, given: str | None) -> str:
    """--served-model-name, else the first id GET /v1/models lists."""
    if given:
        return given
    try:
        return asyncio.run(first_model_id(url))
    except Exception as exc:  # any failure here just means "ask the user"; the load itself will tell more
        raise ServerFailed(f"could not read the model name from {url}/v1/models ({exc}); "
                           "pass --served-model-name") from exc


def warm_up(url: str, model: str, vocab_size: int, seed: int) -> None:
    """Two short requests, so first-call costs do not land in the first measured TTFT."""
    requests = random_requests(2, (16, 16), (4, 4), vocab_size, seed + 2)
    results = asyncio.run(run_load(url, model, requests, [0.0, 0.0]))
    bad = [r.error for r in results if not r.ok]
    if bad:
        raise ServerFailed(f"warm-up request failed: {bad[0]}")


def short_requests(requests: Sequence[BenchRequest], results: Sequence[RequestResult]) -> int:
    """Completed requests that did not get exactly the output length they asked for."""
    return sum(r.ok and r.output_tokens != q.output_len for q, r in zip(requests, results, strict=True))


# --- the latency run -------------------------------------------------------------------------

KEY_FIGURES: dict[str, Callable[[Summary], float]] = {  # name in the report -> how to read it off a Summary
    "ttft_p99_s": lambda s: s.ttft.p99, "ttft_median_s": lambda s: s.ttft.median,
    "tpot_median_s": lambda s: s.tpot.median, "tpot_p99_s": lambda s: s.tpot.p99,
    "itl_median_s": lambda s: s.itl.median, "itl_p99_s": lambda s: s.itl.p99,
    "e2el_median_s": lambda s: s.e2el.median, "output_tok_s": lambda s: s.output_throughput,
    "request_throughput": lambda s: s.request_throughput, "failed": lambda s: s.failed,
}


def run_once(args: argparse.Namespace, url: str, model: str, requests: list[BenchRequest],
             arrivals: list[float]) -> tuple[Summary, int]:
    results = asyncio.run(run_load(url, model, requests, arrivals, args.max_concurrency))
    return summarize(results, wall_duration(results)), short_requests(requests, results)


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    model = model_name(url, args.served_model_name)
    warm_up(url, model, args.vocab_size, args.seed)
    lengths = (args.input_len, args.input_len), (args.output_len, args.output_len)
    requests = random_requests(args.num_prompts, *lengths, args.vocab_size, args.seed)
    arrivals = arrival_times(args.num_prompts, args.request_rate, args.burstiness, args.seed)
    runs = []
    for i in range(args.repeats):
        summary, short = run_once(args, url, model, requests, arrivals)
        print(f"\n--- run {i + 1}/{args.repeats} ---\n{summary.table()}", flush=True)
        if short:
            print(f"warning: {short} requests got a different number of tokens than they asked for")
        runs.append({"summary": summary.to_dict(), "short_requests": short,
                     **{k: read(summary) for k, read in KEY_FIGURES.items()}})
    return {"model": model, "runs": runs,
            "median": {k: statistics.median(r[k] for r in runs) for k in KEY_FIGURES}}


def verdict(report: dict[str, Any]) -> tuple[bool, list[str]]:
    med = report["median"]
    checks = [
        (f"p99 TTFT {med['ttft_p99_s'] * 1000:.0f} ms <= {TTFT_P99_TARGET_S * 1000:.0f} ms",
         med["ttft_p99_s"] <= TTFT_P99_TARGET_S),
        (f"median TPOT {med['tpot_median_s'] * 1000:.1f} ms <= {TPOT_MEDIAN_TARGET_S * 1000:.0f} ms",
         med["tpot_median_s"] <= TPOT_MEDIAN_TARGET_S),
        (f"failed requests {med['failed']:.0f} == 0", med["failed"] == 0),
    ]
    # NaN (no successful request) compares False, so an all-failed run cannot pass.
    return all(ok for _, ok in checks), [f"{'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--url", help="measure this running server (base URL) instead of starting one")
    p.add_argument("--port", type=int, default=0, help="port for the server this script starts (default: free)")
    p.add_argument("--served-model-name", help="the requests' model field (default: first of GET /v1/models)")
    p.add_argument("--num-prompts", type=int, default=40)
    p.add_argument("--request-rate", type=float, default=1.0, help="requests/s; inf sends all at once")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the gaps; 1 is Poisson")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=SMOLLM2_VOCAB_SIZE, help="random prompt ids are below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="runs against the same server; medians are reported")
    args, server_args = p.parse_known_args(argv)
    if server_args[:1] == ["--"]:
        server_args = server_args[1:]
    if args.url and server_args:
        p.error(f"unrecognized arguments {server_args}: server arguments need a server this script starts")
    return args, server_args


def main(argv: list[str] | None = None) -> int:
    args, server_args = parse_args(argv)
    loadavg_start = os.getloadavg()
    try:
        if args.url:
            report = measure(args, args.url.rstrip("/"))
        else:
            with running_server(server_args, args.port) as url:
                report = measure(args, url)
    except ServerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    passed, lines = verdict(report)
    _print_summary(report, args)
    print("\n".join(lines))
    report.update(benchmark="serve_latency", args=vars(args), server_args=server_args, passed=passed,
                  loadavg_start=loadavg_start, loadavg_end=os.getloadavg())
    print(json.dumps(json_safe(report)))
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def _print_summary(report: dict[str, Any], args: argparse.Namespace) -> None:
    med = report["median"]
    label = f"median of {args.repeats} runs" if args.repeats > 1 else "1 run"
    print(f"\n=== summary ({label}; {args.num_prompts} requests at {args.request_rate}/s, "
          f"{args.input_len} in / {args.output_len} out) ===")
    for name, value in med.items():
        shown = f"{value * 1000:.1f} ms" if name.split("_")[0] in METRICS else f"{value:.2f}"
        print(f"{name:<20}{shown:>12}")


def bench_cli_summary(url: str, seed: int, dataset: list[str]) -> dict[str, Any]:
    """One run of `llmserve bench serve` against `url` (every request runs to its length); its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, "-m", "llmserve.cli", "bench", "serve", "--url", url, "--no-progress",
                   "--extra-body", '{"ignore_eos": true}', "--vocab-size", "49152", "--seed", str(seed),
                   "--out", str(out), *dataset]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["summary"]


def json_safe(value: Any) -> Any:
    """NaN (no samples) and inf (rate) as null and "inf": strict JSON readers reject the bare tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


if __name__ == "__main__":
    sys.exit(main())
