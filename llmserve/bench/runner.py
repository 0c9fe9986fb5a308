"""One benchmark run (or a sweep of runs over request rates) against a server, and its JSON form."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llmserve.bench.client import DEFAULT_TIMEOUT_S, first_model_id, run_load
from llmserve.bench.datasets import DatasetSpec, load_dataset
from llmserve.bench.result import RequestResult
from llmserve.bench.slo import SLO
from llmserve.bench.stats import Summary, summarize, summarize_by_priority, wall_duration
from llmserve.bench.workload import BenchRequest, Endpoint, arrival_times, with_priorities

RESULT_FORMAT = "llmserve-bench/1"


@dataclass(frozen=True)
class BenchConfig:
    url: str
    dataset: DatasetSpec
    model: str | None = None  # None: the first model GET /v1/models lists
    request_rate: float = math.inf  # requests / s; inf sends everything at t=0
    burstiness: float = 1.0
    max_concurrency: int | None = None
    endpoint: Endpoint = "completions"
    priority_mix: dict[int, float] | None = None
    slo: SLO | None = None
    cost_per_hour: float | None = None  # what the server's machine costs, in USD per hour
    api_key: str | None = None
    extra_body: dict[str, Any] | None = None
    seed: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S  # per request, from send to '[DONE]'

    def describe(self) -> dict[str, Any]:
        """The settings worth keeping next to the figures (never the API key)."""
        return {
            "url": self.url, "model": self.model, "endpoint": self.endpoint, "dataset": asdict(self.dataset),
            "request_rate": "inf" if math.isinf(self.request_rate) else self.request_rate,
            "burstiness": self.burstiness, "max_concurrency": self.max_concurrency,
            "priority_mix": {f"p{k}": v for k, v in self.priority_mix.items()} if self.priority_mix else None,
            "slo": dict(self.slo.targets) if self.slo else None, "cost_per_hour": self.cost_per_hour,
            "extra_body": self.extra_body, "seed": self.seed, "timeout_s": self.timeout_s,
        }


@dataclass
class BenchRun:
    config: dict[str, Any]  # BenchConfig.describe()
    model: str
    started_at: str
    results: list[RequestResult]  # times in seconds from the run's first send
    duration_s: float
    summary: Summary
    by_priority: dict[str, Summary] = field(default_factory=dict)

    @property
    def request_rate(self) -> float:
        rate = self.config["request_rate"]
        return math.inf if rate == "inf" else float(rate)

    def to_json(self) -> dict[str, Any]:
        return json_safe({
            "format": RESULT_FORMAT, "config": self.config, "model": self.model, "started_at": self.started_at,
            "duration_s": self.duration_s, "summary": self.summary.to_dict(),
            "by_priority": {name: s.to_dict() for name, s in self.by_priority.items()},
            "requests": [asdict(r) for r in self.results],
        })

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchRun:
        """Figures are recomputed from the stored per-request timings, with the stored SLO and cost."""
        if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
            raise ValueError(f"not an llmserve bench result (expected format {RESULT_FORMAT!r})")
        config = data["config"]
        results = [RequestResult(**r) for r in data["requests"]]
        return analyze(config, data["model"], data["started_at"], results, data["duration_s"])


def analyze(config: dict[str, Any], model: str, started_at: str, results: list[RequestResult],
            duration_s: float | None = None) -> BenchRun:
    """The figures of a run from its per-request results and its described config (SLO, cost, mix)."""
    duration = wall_duration(results) if duration_s is None else duration_s
    slo = SLO(config["slo"]) if config.get("slo") else None
    cost = None if config.get("cost_per_hour") is None else config["cost_per_hour"] * duration / 3600
    classes = [int(name.removeprefix("p")) for name in config.get("priority_mix") or {}]
    return BenchRun(config, model, started_at, results, duration, summarize(results, duration, slo, cost),
                    summarize_by_priority(results, duration, slo, cost, classes))


def build_requests(config: BenchConfig) -> list[BenchRequest]:
    requests = load_dataset(config.dataset)
    if config.priority_mix:
        requests = with_priorities(requests, config.priority_mix, config.seed)
    return requests


async def run_bench(config: BenchConfig, on_done: Callable[[RequestResult], None] | None = None,
                    requests: Sequence[BenchRequest] | None = None) -> BenchRun:
    """Send the dataset (or `requests`, already built from it) at the configured arrivals;
    failures of the server are counted, not raised."""
    requests = build_requests(config) if requests is None else requests
    arrivals = arrival_times(len(requests), config.request_rate, config.burstiness, config.seed)
    model = config.model or await first_model_id(config.url, config.api_key)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    results = await run_load(config.url, model, requests, arrivals, config.max_concurrency, config.endpoint,
                             config.api_key, config.extra_body, config.timeout_s, on_done=on_done)
    return analyze(config.describe(), model, started_at, _relative_times(results))


async def run_sweep(config: BenchConfig, rates: Sequence[float],
                    on_done: Callable[[RequestResult], None] | None = None,
                    on_run: Callable[[BenchRun], None] | None = None) -> list[BenchRun]:
    """One run per request rate, same dataset and seed, one after the other.

    The model is looked up once: a server that dies between rates fails the later runs' requests
    (counted) instead of ending the sweep. `on_run` sees each run as it ends (to save it at once).
    """
    config = replace(config, model=config.model or await first_model_id(config.url, config.api_key))
    requests = build_requests(config)  # the same for every rate: read a dataset file once
    runs = []
    for rate in rates:
        run = await run_bench(replace(config, request_rate=rate), on_done, requests)
        if on_run is not None:
            on_run(run)
        runs.append(run)
    return runs


def _relative_times(results: list[RequestResult]) -> list[RequestResult]:
    """Shift perf_counter timestamps so the first send is 0: small, readable numbers in the JSON."""
    if not results:
        return results
    origin = min(r.send_time for r in results)
    return [replace(r, send_time=r.send_time - origin, end_time=r.end_time - origin,
                    first_token_time=None if r.first_token_time is None else r.first_token_time - origin,
                    chunk_times=[t - origin for t in r.chunk_times], text="")
            for r in results]


def json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def load_runs(data: Any) -> list[BenchRun]:
    """A run file holds one run; a sweep file {"sweep": [...]} holds one per rate."""
    if isinstance(data, dict) and isinstance(data.get("sweep"), list):
        return [BenchRun.from_json(item) for item in data["sweep"]]
    return [BenchRun.from_json(data)]
