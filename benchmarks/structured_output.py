"""The cost of structured outputs: 32 concurrent json_schema requests against the same 32 unconstrained,
in one run against one `llmserve serve`, over HTTP only (the official openai client).

Three rounds, each 32 chat requests sent at once, each request with its own prompt:
  unconstrained   no response_format, ignore_eos: every request writes exactly --max-tokens tokens
  constrained     response_format json_schema, with a schema whose array asks for more items than
                  --max-tokens can hold, so every request also writes exactly --max-tokens tokens
  mixed           half of each, interleaved
It prints tokens/s of the first two and their ratio (target: constrained >= 0.85x), and how much
slower the unconstrained requests of the mixed round finish than in the unconstrained round (mean
end-to-end latency; the batch is 32 either way; target: under 3%). Each round runs --repeats times,
alternating, and the medians are reported.

    python benchmarks/structured_output.py [--requests 32] [--max-tokens 64] [--repeats 3] [serve args...]
    python benchmarks/structured_output.py --url http://host:port   # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from benchmarks.serve_latency import running_server  # noqa: E402

# More items than any --max-tokens here can write: every constrained request runs to its length limit,
# as the unconstrained ones do with ignore_eos, so both rounds compute the same number of tokens.
SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "minItems": 1000, "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "count": {"type": "integer"},
                       "ok": {"type": "boolean"}},
        "required": ["name", "count", "ok"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "inventory", "schema": SCHEMA, "strict": True}}
TOPICS = ["a bakery", "a hardware store", "a library", "a garden", "a kitchen", "a workshop", "a pharmacy",
          "a toy shop"]


@dataclass
class Round:
    seconds: float
    tokens: int
    latencies: dict[bool, list[float]]  # constrained? -> each request's end-to-end seconds

    @property
    def throughput(self) -> float:
        return self.tokens / self.seconds


def prompt(tag: int, index: int) -> list[dict[str, str]]:
    # A tag per round: no round may find its prompts in the prefix cache when another did not.
    return [{"role": "user", "content": f"List everything in {TOPICS[index % len(TOPICS)]} as JSON "
                                        f"(#{tag}-{index})."}]


async def one_request(client: openai.AsyncOpenAI, model: str, tag: int, index: int, constrained: bool,
                      max_tokens: int) -> tuple[float, int]:
    extra = {"response_format": RESPONSE_FORMAT} if constrained else {}
    start = time.perf_counter()
    resp = await client.chat.completions.create(model=model, messages=prompt(tag, index), max_tokens=max_tokens,
                                                temperature=0.7, seed=index, extra_body={"ignore_eos": True},
                                                **extra)
    elapsed = time.perf_counter() - start
    if constrained and not resp.choices[0].message.content.startswith('{"items"'):
        raise RuntimeError(f"a constrained request came back unconstrained: {resp.choices[0].message.content!r}")
    return elapsed, resp.usage.completion_tokens


async def run_round(client: openai.AsyncOpenAI, model: str, tag: int, flags: list[bool], max_tokens: int) -> Round:
    start = time.perf_counter()
    results = await asyncio.gather(*(one_request(client, model, tag, i, c, max_tokens)
                                     for i, c in enumerate(flags)))
    seconds = time.perf_counter() - start
    latencies: dict[bool, list[float]] = {True: [], False: []}
    for constrained, (elapsed, _) in zip(flags, results, strict=True):
        latencies[constrained].append(elapsed)
    return Round(seconds, sum(tokens for _, tokens in results), latencies)


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[Round]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    model = (await client.models.list()).data[0].id
    n = args.requests
    plans = {"unconstrained": [False] * n, "constrained": [True] * n, "mixed": [i % 2 == 0 for i in range(n)]}
    # Warm-up at full width: the schema compiles once, and the first steps' one-off costs land here.
    await run_round(client, model, 0, plans["mixed"], args.max_tokens)
    rounds: dict[str, list[Round]] = {name: [] for name in plans}
    tag = 0
    for repeat in range(args.repeats):
        for name, flags in plans.items():
            tag += 1
            result = await run_round(client, model, tag, flags, args.max_tokens)
            rounds[name].append(result)
            print(f"repeat {repeat + 1} {name:>13}: {result.tokens} tokens in {result.seconds:.2f} s = "
                  f"{result.throughput:.1f} tok/s", flush=True)
    await client.close()
    return rounds


def report(rounds: dict[str, list[Round]]) -> dict[str, float]:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    plain = median([r.throughput for r in rounds["unconstrained"]])
    guided = median([r.throughput for r in rounds["constrained"]])
    alone = median([statistics.mean(r.latencies[False]) for r in rounds["unconstrained"]])
    beside = median([statistics.mean(r.latencies[False]) for r in rounds["mixed"]])
    figures = {"unconstrained_tok_s": plain, "constrained_tok_s": guided, "ratio": guided / plain,
               "unconstrained_latency_alone_s": alone, "unconstrained_latency_mixed_s": beside,
               "mixed_cost": beside / alone - 1.0}
    print(f"\nunconstrained {plain:.1f} tok/s, json_schema {guided:.1f} tok/s: "
          f"ratio {figures['ratio']:.3f} (target >= 0.85)")
    print(f"unconstrained requests' mean latency: {alone:.2f} s alone, {beside:.2f} s beside constrained ones: "
          f"{100 * figures['mixed_cost']:+.1f}% (target < 3%)")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args, server_args = parser.parse_known_args(argv)
    if args.url:
        figures = report(asyncio.run(measure(args.url.rstrip("/"), args)))
    else:
        with running_server(server_args) as url:
            figures = report(asyncio.run(measure(url, args)))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
