"""What `llmserve bench serve | sweep | compare` do once their arguments are parsed."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmserve.bench.client import DEFAULT_TIMEOUT_S
from llmserve.bench.datasets import DatasetSpec
from llmserve.bench.plots import plot_latency_cdfs, plot_sweep
from llmserve.bench.report import compare_table, run_report, sweep_table
from llmserve.bench.result import RequestResult
from llmserve.bench.runner import BenchConfig, BenchRun, load_runs, run_bench, run_sweep

NON_TERMINAL_WIDTH = 160  # tables in logs and CI output should not wrap at rich's default of 80


def config_from_args(args: argparse.Namespace, request_rate: float) -> BenchConfig:
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be at least 1")
    form = "chat" if args.endpoint == "chat" else "text" if args.text_prompts else "ids"
    dataset = DatasetSpec(kind=args.dataset, num_prompts=args.num_prompts, input_len=args.input_len,
                          output_len=args.output_len, prefix_len=args.prefix_len, num_prefixes=args.num_prefixes,
                          vocab_size=args.vocab_size, form=form, seed=args.seed)
    return BenchConfig(url=args.url, dataset=dataset, model=args.model, request_rate=request_rate,
                       burstiness=args.burstiness, max_concurrency=args.max_concurrency, endpoint=args.endpoint,
                       priority_mix=args.priority_mix, slo=args.slo, cost_per_hour=args.cost_per_hour,
                       api_key=args.api_key, extra_body=args.extra_body, seed=args.seed,
                       timeout_s=DEFAULT_TIMEOUT_S if args.request_timeout is None else args.request_timeout)


def make_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=NON_TERMINAL_WIDTH)
    return console


@contextmanager
def progress_bar(enabled: bool, total: int) -> Iterator[Callable[[RequestResult], None]]:
    """A callback for each finished request; the bar goes to stderr and only on a terminal."""
    progress = Progress(TextColumn("[bold]requests"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not enabled, transient=True)
    task = progress.add_task("requests", total=total, failed=0)
    failed = 0

    def on_done(result: RequestResult) -> None:
        nonlocal failed
        failed += not result.ok
        progress.update(task, advance=1, failed=failed)

    with progress:
        yield on_done


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args, args.request_rate)
    with progress_bar(not args.no_progress, args.num_prompts) as on_done:
        run = _run_or_explain(run_bench(config, on_done), config)
    console = make_console()
    console.print(run_report(run))
    _write_outputs(console, args, run.to_json(), lambda folder: [plot_latency_cdfs(run, folder)])
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    config = config_from_args(args, args.rates[0])
    console = make_console()
    saved: list[dict[str, Any]] = []

    def finished(run: BenchRun) -> None:
        console.print(run_report(run, title=f"rate {run.config['request_rate']} req/s"))
        saved.append(run.to_json())
        _write_json(args.out, {"sweep": saved})  # a sweep cut short keeps what it measured

    with progress_bar(not args.no_progress, args.num_prompts * len(args.rates)) as on_done:
        runs = _run_or_explain(run_sweep(config, args.rates, on_done, finished), config)
    console.print(sweep_table(runs))
    _write_outputs(console, args, None, lambda folder: [plot_sweep(runs, folder), *(_per_rate_cdfs(runs, folder))])
    return 0


def _per_rate_cdfs(runs: list[BenchRun], folder: Path) -> list[Path]:
    return [plot_latency_cdfs(run, folder / f"rate_{run.config['request_rate']}") for run in runs]


def cmd_compare(args: argparse.Namespace) -> int:
    a_runs, b_runs = _read_runs(args.a), _read_runs(args.b)
    console = make_console()
    if len(a_runs) == 1 and len(b_runs) == 1:
        console.print(compare_table(a_runs[0], b_runs[0], args.a.stem, args.b.stem))
        return 0
    b_by_rate = {run.request_rate: run for run in b_runs}
    common = [run for run in a_runs if run.request_rate in b_by_rate]
    if not common:
        raise ValueError(f"{args.a} and {args.b} share no request rate to compare")
    for a in common:
        rate = a.config["request_rate"]
        console.print(compare_table(a, b_by_rate[a.request_rate], f"{args.a.stem}@{rate}", f"{args.b.stem}@{rate}"))
    return 0


def _read_runs(path: Path) -> list[BenchRun]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    try:
        return load_runs(data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a complete llmserve bench result: {exc}") from None


def _run_or_explain(coro: Any, config: BenchConfig) -> Any:
    try:
        return asyncio.run(coro)
    except (aiohttp.ClientError, TimeoutError) as exc:  # only the model lookup raises; request failures count
        raise ValueError(f"cannot list the models of {config.url} ({type(exc).__name__}: {exc}); is the server "
                         "up? --model NAME sends the requests without asking") from None


def _write_outputs(console: Console, args: argparse.Namespace, result: dict[str, Any] | None,
                   plot: Callable[[Path], list[Path]]) -> None:
    """`result` None: the JSON is already written (a sweep saves each run as it ends)."""
    if args.out is not None:
        if result is not None:
            _write_json(args.out, result)
        console.print(f"results: {args.out}")
    if args.plot is not None:
        for path in plot(args.plot):
            console.print(f"plot: {path}")


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    """`result` holds BenchRun.to_json() output, which is already strict JSON."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
