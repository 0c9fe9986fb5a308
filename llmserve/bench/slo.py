"""Service-level objectives for goodput: per-request latency targets, as vLLM's bench --goodput."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmserve.bench.result import RequestResult, request_tpot, request_ttft
from llmserve.units import parse_duration_s

SLO_METRICS = ("ttft", "tpot", "e2el")


@dataclass(frozen=True)
class SLO:
    """Upper bounds in seconds; a request meets the SLO when it succeeded and meets every bound."""

    targets: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> SLO:
        """'ttft=500ms,tpot=50ms' -> SLO({'ttft': 0.5, 'tpot': 0.05})."""
        targets: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip().lower()
            if not sep or name not in SLO_METRICS:
                raise ValueError(f"an SLO is like ttft=500ms,tpot=50ms over {', '.join(SLO_METRICS)}; got {item!r}")
            targets[name] = parse_duration_s(value)
        if not targets:
            raise ValueError(f"the SLO {spec!r} names no target")
        return cls(targets)

    def __str__(self) -> str:
        return ",".join(f"{name}={seconds * 1000:g}ms" for name, seconds in self.targets.items())

    def met_by(self, result: RequestResult) -> bool:
        if not result.ok:
            return False
        return all(_value(result, name) <= bound for name, bound in self.targets.items())


def _value(result: RequestResult, metric: str) -> float:
    if metric == "ttft":
        ttft = request_ttft(result)
        return math.inf if ttft is None else ttft
    if metric == "tpot":
        tpot = request_tpot(result)
        return 0.0 if tpot is None else tpot  # one output token: no decode time to miss a target with
    return result.end_time - result.send_time
