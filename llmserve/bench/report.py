"""Rich tables for a run, a sweep, and a comparison of two runs. Latencies print in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rich.console import Group, RenderableType
from rich.table import Table

from llmserve.bench.runner import BenchRun
from llmserve.bench.stats import METRICS, Percentiles, Summary

STATS = ("mean", "median", "p90", "p95", "p99")


def fmt(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value * scale:,.{digits}f}"


def ms(value: float | None) -> str:
    return fmt(value, 1, 1000.0)


def percent(value: float | None) -> str:
    return fmt(value, 1, 100.0) + ("%" if value is not None and not math.isnan(value) else "")


def run_report(run: BenchRun, title: str = "llmserve bench") -> RenderableType:
    parts: list[RenderableType] = [overview_table(run, title), latency_table(run.summary)]
    if run.by_priority:
        parts.append(priority_table(run.by_priority))
    return Group(*parts)


def overview_table(run: BenchRun, title: str) -> Table:
    s, config = run.summary, run.config
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    dataset = config["dataset"]
    table.add_row("server", f"{config['url']}  model {run.model}  endpoint {config['endpoint']}")
    table.add_row("workload", f"{dataset['kind']}, {dataset['num_prompts']} prompts, rate {config['request_rate']} "
                  f"req/s, burstiness {config['burstiness']}, max concurrency {config['max_concurrency'] or '-'}")
    table.add_row("requests", f"{s.completed} completed, {s.failed} failed in {s.duration_s:.2f} s")
    if s.errors_by_status:
        table.add_row("errors", ", ".join(f"{kind}: {n}" for kind, n in sorted(s.errors_by_status.items())))
        for message in s.first_errors:
            table.add_row("", message)
    table.add_row("throughput", f"{s.request_throughput:.2f} req/s, {fmt(s.output_throughput)} output tok/s, "
                  f"{fmt(s.total_token_throughput)} total tok/s")
    table.add_row("tokens", f"{s.prompt_tokens:,} prompt, {s.output_tokens:,} output"
                  + (f" ({s.requests_without_usage} of {s.completed} requests sent no usage: their counts are "
                     "estimates)" if s.requests_without_usage else ""))
    if s.goodput is not None:
        table.add_row("goodput", f"{s.goodput:.2f} req/s meeting {_slo_text(config)}; "
                      f"SLO attainment {percent(s.slo_attainment)}")
    if s.cost_per_million_output_tokens is not None:
        table.add_row("cost", f"${fmt(s.cost_per_million_output_tokens, 3)} per 1M output tokens "
                      f"(${fmt(s.cost_usd, 4)} for the run at ${config['cost_per_hour']}/h)")
    return table


def latency_table(s: Summary) -> Table:
    table = Table(title="latency (ms)", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("n", justify="right")
    for stat in STATS:
        table.add_column(stat, justify="right")
    for name in METRICS:
        p: Percentiles = getattr(s, name)
        table.add_row(name.upper(), str(p.count), *(ms(getattr(p, stat)) for stat in STATS))
    return table


def priority_table(by_priority: dict[str, Summary]) -> Table:
    table = Table(title="per priority class", title_justify="left")
    columns = ["class", "ok", "failed", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
               "E2EL p99", "goodput", "SLO met", "$/1M out"]
    for column in columns:
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, s in by_priority.items():
        table.add_row(name, str(s.completed), str(s.failed), fmt(s.request_throughput, 2), fmt(s.output_throughput),
                      ms(s.ttft.median), ms(s.ttft.p99), ms(s.tpot.median), ms(s.tpot.p99), ms(s.e2el.p99),
                      fmt(s.goodput, 2), percent(s.slo_attainment), fmt(s.cost_per_million_output_tokens, 3))
    return table


def sweep_table(runs: Sequence[BenchRun]) -> Table:
    table = Table(title="sweep over request rate", title_justify="left")
    columns = ["rate", "ok", "failed", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
               "ITL p99", "E2EL p99", "goodput", "SLO met", "$/1M out"]
    for column in columns:
        table.add_column(column, justify="right")
    for run in runs:
        s = run.summary
        table.add_row(str(run.config["request_rate"]), str(s.completed), str(s.failed), fmt(s.request_throughput, 2),
                      fmt(s.output_throughput), ms(s.ttft.median), ms(s.ttft.p99), ms(s.tpot.median), ms(s.tpot.p99),
                      ms(s.itl.p99), ms(s.e2el.p99), fmt(s.goodput, 2), percent(s.slo_attainment),
                      fmt(s.cost_per_million_output_tokens, 3))
    return table


# (label, how to read it from a Summary, formatter); latencies in ms
COMPARED: list[tuple[str, Callable[[Summary], float | None], Callable[[float | None], str]]] = [
    ("completed", lambda s: s.completed, lambda v: fmt(v, 0)),
    ("failed", lambda s: s.failed, lambda v: fmt(v, 0)),
    ("request throughput (req/s)", lambda s: s.request_throughput, lambda v: fmt(v, 3)),
    ("output throughput (tok/s)", lambda s: s.output_throughput, fmt),
    ("total throughput (tok/s)", lambda s: s.total_token_throughput, fmt),
    ("goodput (req/s)", lambda s: s.goodput, lambda v: fmt(v, 3)),
    ("cost per 1M output tokens ($)", lambda s: s.cost_per_million_output_tokens, lambda v: fmt(v, 3)),
    *[(f"{metric.upper()} {stat} (ms)", (lambda s, m=metric, st=stat: getattr(getattr(s, m), st)), ms)
      for metric in METRICS for stat in ("median", "p90", "p99")],
]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == 0:
        return None
    return b / a


def compare_table(a: BenchRun, b: BenchRun, label_a: str, label_b: str) -> Table:
    table = Table(title=f"{label_b} vs {label_a} (ratio = {label_b} / {label_a})", title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column(label_a, justify="right")
    table.add_column(label_b, justify="right")
    table.add_column("ratio", justify="right")
    for label, read, show in COMPARED:
        va, vb = read(a.summary), read(b.summary)
        r = ratio(va, vb)
        table.add_row(label, show(va), show(vb), "-" if r is None else f"{r:.3f}x")
    return table


def _slo_text(config: dict) -> str:
    return ", ".join(f"{name} <= {seconds * 1000:g} ms" for name, seconds in (config.get("slo") or {}).items())
