"""Soak: mixed HTTP load against `llmserve serve` for a while, with the server's memory every minute.

The load mixes what clients really send: completions and chat, streamed and not, greedy and
seeded sampling, n=2, logprobs, a shared system prompt (prefix-cache hits), streams the client
leaves after a few chunks, and invalid bodies. Each minute it prints the server's RSS split into
the KV pool (the per-layer key and value mappings, which fault in as blocks are first used), the
malloc heap and other anonymous memory, and file-backed pages. The target: RSS flat within 5%
over the last 10 minutes.

    python benchmarks/soak.py [--minutes 15] [--concurrency 6] [server args...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from benchmarks.serve_latency import ServerProcess, model_name  # noqa: E402

WORDS = ["river", "stone", "light", "model", "paper", "cloud", "number", "garden", "window", "orange", "silver",
         "market", "engine", "letter", "mountain", "story", "signal", "winter", "bridge", "coffee", "planet"]
SYSTEM = "You are a careful assistant. " * 40  # about 240 tokens every chat request shares


def memory_breakdown(pid: int) -> dict[str, float]:
    """MiB of resident memory by kind, from /proc/PID/smaps. The KV pool is recognised as the
    anonymous mappings advised MADV_NOHUGEPAGE ("nh"): only its per-layer caches are (see
    llmserve/model/attention.py), and the kernel merges them into a few large mappings."""
    kinds: Counter = Counter()
    name, rss = "", 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else ""
        elif head[0] == "Rss:":
            rss = int(head[1])
        elif head[0] == "VmFlags:":  # the last line of each mapping
            if name == "[heap]":
                kind = "heap"
            elif name and not name.startswith("["):
                kind = "file"
            else:
                kind = "kv_pool" if "nh" in head[1:] and not name else "other_anon"
            kinds[kind] += rss
    return {"rss": sum(kinds.values()) / 1024, **{k: v / 1024 for k, v in kinds.items()}}


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)

    def add(self, status: int | str) -> None:
        self.statuses[status] += 1


def random_text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def random_body(rng: random.Random, model: str) -> tuple[str, dict[str, Any], str]:
    """(path, body, what to do with the answer: read | leave | bad)."""
    sampling: dict[str, Any] = {"model": model, "max_tokens": rng.randint(8, 96)}
    if rng.random() < 0.5:
        sampling.update(temperature=0.8, top_p=0.9, seed=rng.randrange(1 << 30))
    else:
        sampling.update(temperature=0)
    if rng.random() < 0.15:
        sampling["n"] = 2
    stream = rng.random() < 0.5
    sampling["stream"] = stream
    roll = rng.random()
    if roll < 0.05:
        return "/v1/completions", {**sampling, "prompt": "x", "top_p": 7}, "bad"
    action = "leave" if stream and roll < 0.15 else "read"
    if rng.random() < 0.5:
        body = {**sampling, "prompt": random_text(rng, 10, 300)}
        if rng.random() < 0.2:
            body["logprobs"] = 3
        return "/v1/completions", body, action
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": random_text(rng, 5, 120)}]
    body = {**sampling, "messages": messages}
    if rng.random() < 0.2:
        body.update(logprobs=True, top_logprobs=2)
    return "/v1/chat/completions", body, action


async def one_request(session: aiohttp.ClientSession, url: str, rng: random.Random, model: str, tally: Tally) -> None:
    path, body, action = random_body(rng, model)
    try:
        async with session.post(url + path, json=body) as resp:
            if action == "leave" and resp.status == 200:
                for _ in range(3):  # a few chunks, then the client goes away
                    await resp.content.readline()
                resp.close()
                tally.add("left")
                return
            await resp.read()
            tally.add(resp.status)
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.add(type(exc).__name__)


async def drive(url: str, model: str, seconds: float, concurrency: int, seed: int, tally: Tally) -> None:
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            while time.monotonic() < deadline:
                await one_request(session, url, rng, model, tally)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def soak(server: ServerProcess, model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    tally = Tally()
    samples = [{"minute": 0, **memory_breakdown(server.proc.pid)}]
    print(_row(samples[0], tally), flush=True)
    load = asyncio.create_task(drive(server.url, model, args.minutes * 60, args.concurrency, args.seed, tally))
    for minute in range(1, args.minutes + 1):
        await asyncio.sleep(max(0.0, minute * 60 - (time.monotonic() - args.started)))
        samples.append({"minute": minute, **memory_breakdown(server.proc.pid), "requests": dict(tally.statuses)})
        print(_row(samples[-1], tally), flush=True)
    await load
    return samples


def _row(sample: dict[str, Any], tally: Tally) -> str:
    kinds = " ".join(f"{k} {sample.get(k, 0):7.1f}" for k in ("kv_pool", "heap", "other_anon", "file"))
    done = sum(tally.statuses.values())
    return f"min {sample['minute']:3d}  RSS {sample['rss']:7.1f} MiB  ({kinds})  requests {done} {dict(tally.statuses)}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=int, default=15)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args, server_args = p.parse_known_args(argv)
    server = ServerProcess.start(server_args)
    try:
        server.wait_ready()
        model = model_name(server.url, None)
        args.started = time.monotonic()
        samples = asyncio.run(soak(server, model, args))
    finally:
        server.stop()
    window = [s["rss"] for s in samples if s["minute"] >= args.minutes - 10]
    growth = (window[-1] - window[0]) / window[0]
    spread = (max(window) - min(window)) / window[0]
    print(f"\nRSS over the last {len(window) - 1} minutes: {window[0]:.1f} -> {window[-1]:.1f} MiB "
          f"({growth:+.1%}; max-min {spread:.1%} of the first; target: within 5%)")
    report = {"samples": samples, "growth": growth, "spread": spread, "server_args": server_args}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
