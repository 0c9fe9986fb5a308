"""What watching the server costs: the offline-shaped burst with and without a scraper polling
`/metrics` and `/dashboard/data` every `--interval` seconds (Prometheus scrapes every 15 s by
default; 1 s here is the dashboard page's own pace and a harsher test).

One server; rounds alternate unscraped / scraped, each sending the same seeded burst through the
bench CLI (`llmserve bench serve`, EOS ignored, so both compute the same tokens). Prints output
tokens/s of both, medians over --repeats, and their ratio. Target: the scraped run loses under 1%.

    python benchmarks/metrics_overhead.py [--repeats 3] [--num-prompts 32] [--interval 1] [server args...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serve_latency import bench_cli_summary, running_server  # noqa: E402

TARGET_LOSS = 0.01
SCRAPED_PATHS = ("/metrics", "/dashboard/data")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", default="32:512")
    parser.add_argument("--output-len", default="32:128")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_known_args(argv)


class Scraper:
    """Polls the observability endpoints on a thread until stopped; counts the scrapes it made."""

    def __init__(self, base_url: str, interval: float) -> None:
        self.root = base_url.removesuffix("/v1")
        self.interval = interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for path in SCRAPED_PATHS:
                with urllib.request.urlopen(self.root + path, timeout=30) as reply:
                    reply.read()
                self.scrapes += 1


def main(argv: list[str] | None = None) -> int:
    args, server_args = parse_args(argv)
    burst = ["--dataset", "random", "--num-prompts", str(args.num_prompts), "--input-len", args.input_len,
             "--output-len", args.output_len]
    plain: list[float] = []
    scraped: list[float] = []
    with running_server(server_args) as url:
        bench_cli_summary(url, args.seed + 99, ["--dataset", "random", "--num-prompts", "4", "--input-len", "32",
                                                "--output-len", "4"])
        for repeat in range(args.repeats):
            plain.append(bench_cli_summary(url, args.seed, burst)["output_throughput"])
            with Scraper(url, args.interval) as scraper:
                scraped.append(bench_cli_summary(url, args.seed, burst)["output_throughput"])
            print(f"repeat {repeat + 1}: unscraped {plain[-1]:.1f} tok/s, scraped {scraped[-1]:.1f} tok/s "
                  f"({scraper.scrapes} scrapes)", flush=True)
    ratio = statistics.median(scraped) / statistics.median(plain)
    print(f"median output throughput: unscraped {statistics.median(plain):.1f}, scraped "
          f"{statistics.median(scraped):.1f} tok/s: ratio {ratio:.3f} (target >= {1 - TARGET_LOSS:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
