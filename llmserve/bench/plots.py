"""PNG plots: latency CDFs of a run, and throughput and p99 latency against request rate for a sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from llmserve.bench.result import RequestResult
from llmserve.bench.runner import BenchRun
from llmserve.bench.stats import METRICS, metric_values, priority_label

LATENCY_CDF_FILE = "latency_cdf.png"
SWEEP_FILE = "sweep.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def latency_samples(results: Sequence[RequestResult], metric: str) -> list[float]:
    """Milliseconds, sorted, successful requests only, as the summary counts them."""
    return sorted(v * 1000 for v in metric_values([r for r in results if r.ok], metric))


def plot_latency_cdfs(run: BenchRun, out_dir: Path) -> Path:
    """One panel per metric; one curve for all requests, plus one per priority class when there are classes."""
    plt = _pyplot()
    groups: dict[str, list[RequestResult]] = {"all": run.results}
    if run.by_priority:
        for r in run.results:
            groups.setdefault(priority_label(r.priority), []).append(r)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, metric in zip(axes.flat, METRICS, strict=True):
        for name, results in groups.items():
            values = latency_samples(results, metric)
            if values:
                fractions = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, fractions, where="post", label=f"{name} (n={len(values)})")
        ax.set_title(f"{metric.upper()} CDF")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of samples")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    fig.suptitle(f"{run.model} at {run.config['request_rate']} req/s ({run.config['url']})")
    fig.tight_layout()
    return _save(fig, out_dir / LATENCY_CDF_FILE, plt)


def plot_sweep(runs: Sequence[BenchRun], out_dir: Path) -> Path:
    """Throughput (and goodput) and p99 TTFT / TPOT against the offered rate; 'inf' plots as its own tick."""
    plt = _pyplot()
    labels = [str(run.config["request_rate"]) for run in runs]
    xs = list(range(len(runs)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(xs, [run.summary.request_throughput for run in runs], "o-", label="achieved req/s")
    if any(run.summary.goodput is not None for run in runs):
        left.plot(xs, [_nan(run.summary.goodput) for run in runs], "s--", label="goodput req/s")
    left.set_ylabel("requests / s")
    tokens = left.twinx()
    tokens.plot(xs, [run.summary.output_throughput for run in runs], "^:", color="tab:green", label="output tok/s")
    tokens.set_ylabel("output tokens / s")
    left.set_title("throughput vs offered rate")
    left.legend(loc="upper left", fontsize="small")
    tokens.legend(loc="lower right", fontsize="small")
    for metric in ("ttft", "tpot", "e2el"):
        right.plot(xs, [getattr(run.summary, metric).p99 * 1000 for run in runs], "o-", label=f"{metric.upper()} p99")
    right.set_yscale("log")
    right.set_ylabel("ms")
    right.set_title("p99 latency vs offered rate")
    right.legend(fontsize="small")
    for ax in (left, right):
        ax.set_xticks(xs, labels)
        ax.set_xlabel("request rate (req/s)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir / SWEEP_FILE, plt)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _save(fig, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
