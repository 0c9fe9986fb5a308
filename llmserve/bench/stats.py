"""Latency, throughput, goodput and cost figures from a run's RequestResults.

TTFT: first text chunk - send. TPOT: (E2EL - TTFT) / (output_tokens - 1), per request with more
than one token. ITL: every gap between consecutive text chunks, pooled over requests. E2EL: end
(the '[DONE]' line) - send. Only successful requests count; failures are tallied by status.
Goodput: successful requests per second that meet every SLO target; SLO attainment: the share of
all requests sent (failures included) that do.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llmserve.bench.result import RequestResult, request_itls, request_tpot, request_ttft
from llmserve.bench.slo import SLO

METRICS = ("ttft", "tpot", "itl", "e2el")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics, as numpy's default."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lo = math.floor(position)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


@dataclass(frozen=True)
class Percentiles:
    """Seconds. All NaN when there were no samples."""

    count: int
    mean: float
    median: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        mean = statistics.fmean(values) if values else math.nan
        return cls(len(values), mean, percentile(values, 50), percentile(values, 90), percentile(values, 95),
                   percentile(values, 99))


@dataclass(frozen=True)
class Summary:
    completed: int
    failed: int
    # "429", "500", ...; "no response" (refused, dropped before headers); "stream" (200, then a broken stream)
    errors_by_status: dict[str, int]
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float  # (prompt + output) tokens / s
    ttft: Percentiles
    tpot: Percentiles
    itl: Percentiles
    e2el: Percentiles
    first_errors: list[str] = field(default_factory=list)  # a few messages, to say why without a log
    requests_without_usage: int = 0  # completed requests whose token counts are estimates (no usage chunk)
    goodput: float | None = None  # requests / s meeting the SLO; None without an SLO
    slo_attainment: float | None = None  # 0..1 over all requests sent
    cost_usd: float | None = None  # machine cost of the run (or of this class's share of it)
    cost_per_million_output_tokens: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A fixed-width text table, milliseconds for latencies."""
        lines = [f"requests: {self.completed} completed, {self.failed} failed"
                 + (f" {self.errors_by_status}" if self.errors_by_status else "")
                 + f" in {self.duration_s:.2f} s",
                 f"throughput: {self.request_throughput:.2f} req/s, {self.output_throughput:.1f} output tok/s, "
                 f"{self.total_token_throughput:.1f} total tok/s",
                 f"{'ms':<6}{'mean':>10}{'median':>10}{'p90':>10}{'p95':>10}{'p99':>10}"]
        for name in METRICS:
            p: Percentiles = getattr(self, name)
            cells = "".join(f"{v * 1000:>10.1f}" for v in (p.mean, p.median, p.p90, p.p95, p.p99))
            lines.append(f"{name.upper():<6}{cells}")
        lines += [f"error: {e}" for e in self.first_errors]
        return "\n".join(lines)


def wall_duration(results: Sequence[RequestResult]) -> float:
    """From the first send to the last end, over all requests, failed ones included."""
    if not results:
        return 0.0
    return max(r.end_time for r in results) - min(r.send_time for r in results)


def metric_values(results: Sequence[RequestResult], metric: str) -> list[float]:
    """Seconds: one value per request (ITL: one per gap between chunks), where the metric is defined."""
    if metric == "itl":
        return [gap for r in results for gap in request_itls(r)]
    if metric == "e2el":
        return [r.end_time - r.send_time for r in results]
    read = {"ttft": request_ttft, "tpot": request_tpot}[metric]
    return [v for r in results if (v := read(r)) is not None]


def summarize(results: Sequence[RequestResult], duration_s: float, slo: SLO | None = None,
              cost_usd: float | None = None, max_error_messages: int = 3) -> Summary:
    """`cost_usd`: what the machine cost for `duration_s` (cost per hour x hours), or None."""
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    prompt_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    per_s = 1 / duration_s if duration_s > 0 else math.nan
    good = sum(slo.met_by(r) for r in results) if slo is not None else None
    return Summary(
        completed=len(done), failed=len(failed),
        errors_by_status=dict(Counter(_error_kind(r) for r in failed)),
        duration_s=duration_s, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
        request_throughput=len(done) * per_s, output_throughput=output_tokens * per_s,
        total_token_throughput=(prompt_tokens + output_tokens) * per_s,
        ttft=Percentiles.of(metric_values(done, "ttft")), tpot=Percentiles.of(metric_values(done, "tpot")),
        itl=Percentiles.of(metric_values(done, "itl")), e2el=Percentiles.of(metric_values(done, "e2el")),
        first_errors=[r.error for r in failed[:max_error_messages]],
        requests_without_usage=sum(not r.usage_reported for r in done),
        goodput=None if good is None else good * per_s,
        slo_attainment=None if good is None else (good / len(results) if results else math.nan),
        cost_usd=cost_usd,
        cost_per_million_output_tokens=None if cost_usd is None else (
            cost_usd / output_tokens * 1e6 if output_tokens else math.inf),
    )


def priority_label(priority: int | None) -> str:
    return "none" if priority is None else f"p{priority}"


def summarize_by_priority(results: Sequence[RequestResult], duration_s: float, slo: SLO | None = None,
                          cost_usd: float | None = None, classes: Iterable[int] = ()) -> dict[str, Summary]:
    """One Summary per priority class ('p0', 'p2', ...), over the whole run's duration.

    `classes` (the mix asked for) appear even when no request drew them. The machine's cost is
    shared between classes in proportion to their output tokens, so each class's cost per 1M
    output tokens is the run's; its cost_usd is its share.
    """
    classes = sorted({r.priority for r in results} | set(classes), key=lambda p: (p is None, p or 0))
    if not classes:
        return {}
    if classes == [None]:
        return {}
    total_tokens = sum(r.output_tokens for r in results if r.ok)
    by_class = {}
    for priority in classes:
        members = [r for r in results if r.priority == priority]
        tokens = sum(r.output_tokens for r in members if r.ok)
        share = None if cost_usd is None else (cost_usd * tokens / total_tokens if total_tokens else 0.0)
        by_class[priority_label(priority)] = summarize(members, duration_s, slo, share)
    return by_class


def _error_kind(r: RequestResult) -> str:
    if r.status is None:
        return "no response"
    return "stream" if r.status == 200 else str(r.status)
