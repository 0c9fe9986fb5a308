"""`llmserve bench serve | sweep | compare`: measure any OpenAI-compatible server over HTTP."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from llmserve.bench.datasets import DATASET_KINDS
from llmserve.bench.slo import SLO
from llmserve.bench.workload import ENDPOINT_PATHS, parse_length, parse_priority_mix


def _arg_type(parse: Any) -> Any:
    """argparse shows an ArgumentTypeError's own message; a plain ValueError would only say 'invalid value'."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _command(name: str) -> Any:
    """Import the command's module only when a bench command runs: `llmserve serve` starts faster."""
    def run(args: argparse.Namespace) -> int:
        from llmserve.bench import commands

        return getattr(commands, name)(args)

    return run


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="load generator and report for any OpenAI-compatible server")
    commands = bench.add_subparsers(dest="bench_command", required=True)
    serve = commands.add_parser("serve", help="one run: send a dataset at a request rate, report the figures")
    _load_args(serve)
    serve.add_argument("--request-rate", type=parse_rate, default=math.inf,
                       help="requests per second (Poisson, or gamma with --burstiness); inf sends all at once")
    serve.set_defaults(func=_command("cmd_serve"))
    sweep = commands.add_parser("sweep", help="one run per request rate: a table and a plot of the curve")
    _load_args(sweep)
    sweep.add_argument("--rates", type=parse_rates, required=True, help="comma-separated, e.g. 1,2,4,8,inf")
    sweep.set_defaults(func=_command("cmd_sweep"))
    compare = commands.add_parser("compare", help="two result files side by side, with ratios (b / a)")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.set_defaults(func=_command("cmd_compare"))


def _load_args(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the server (with or without /v1)")
    server.add_argument("--model", default=None, help="model field of each request (default: first of /v1/models)")
    server.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY)")
    server.add_argument("--endpoint", choices=sorted(ENDPOINT_PATHS), default="completions")
    server.add_argument("--extra-body", type=_arg_type(json_object), default=None,
                        help='JSON merged into every request body; null drops a field, e.g. \'{"ignore_eos": null}\'')
    data = parser.add_argument_group("dataset")
    data.add_argument("--dataset", default="random", help=" | ".join(DATASET_KINDS))
    data.add_argument("--num-prompts", type=int, default=100)
    length = _arg_type(parse_length)
    data.add_argument("--input-len", type=length, default=(128, 128),
                      help="tokens: N or LO:HI (uniform); for shared-prefix, the question after the prefix")
    data.add_argument("--output-len", type=length, default=(128, 128), help="tokens: N or LO:HI (uniform)")
    data.add_argument("--prefix-len", type=int, default=1024, help="shared-prefix: tokens in each shared prefix")
    data.add_argument("--num-prefixes", type=int, default=1, help="shared-prefix: how many distinct prefixes")
    data.add_argument("--vocab-size", type=int, default=32000, help="random token ids stay below this")
    data.add_argument("--text-prompts", action="store_true",
                      help="send random prompts as words, for servers whose completions take no token ids")
    load = parser.add_argument_group("load and report")
    load.add_argument("--burstiness", type=_arg_type(positive_finite), default=1.0,
                      help="gamma shape: 1 Poisson, < 1 burstier")
    load.add_argument("--max-concurrency", type=int, default=None, help="at most this many requests in flight")
    load.add_argument("--priority-mix", type=_arg_type(parse_priority_mix), default=None,
                      help="share of requests per priority class, e.g. p0=0.1,p2=0.9 (sent as 'priority')")
    load.add_argument("--slo", type=_arg_type(SLO.parse), default=None,
                      help="goodput targets over ttft, tpot, e2el, e.g. ttft=500ms,tpot=50ms (bare numbers: ms)")
    load.add_argument("--cost-per-hour", type=_arg_type(non_negative_finite), default=None,
                      help="USD per hour of the server's machine")
    load.add_argument("--request-timeout", type=_arg_type(positive_finite), default=None,
                      help="seconds from send to the end of the stream before a request counts as failed "
                           "(default: 6 hours)")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--out", type=Path, default=None, help="write the results (JSON) here")
    load.add_argument("--plot", type=Path, default=None, help="write PNG plots into this folder")
    load.add_argument("--no-progress", action="store_true", help="no progress bar")


def positive_finite(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"expected a positive finite number, got {text!r}")
    return value


def non_negative_finite(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a finite number >= 0, got {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a request rate is a number or inf, got {text!r}") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"a request rate must be positive, got {text!r}")
    return rate


def parse_rates(text: str) -> list[float]:
    rates = [parse_rate(part) for part in text.split(",") if part.strip()]
    if not rates or len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(f"--rates needs distinct rates, e.g. 1,2,4,inf; got {text!r}")
    return rates
