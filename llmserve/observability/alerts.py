"""Prometheus alert rules for a server, generated from its service classes.

Each class with a latency target gets multi-window, multi-burn-rate SLO alerts (the Google SRE
workbook's): a fast burn (14.4x the error budget over 1 h and over 5 min, 2% of a 30-day budget
in an hour) and a slow burn (6x over 6 h and over 30 min). The SLI is the server's own verdict,
`service_class_slo_requests_total{target, result}`: the server judges each request against its
class's TTFT and E2E targets, so the rules follow the targets whatever they are set to, and a
class without targets (p3 by default) gets no SLO alert. The objective (the share of requests that
must meet the targets) is the rules' own setting, 99% unless told.

Then the serving alerts: the engine's queue growing for 5 minutes, KV cache above 95%, the HTTP
error ratio, and the engine down. `time_scale` divides every window and `for:` (tests run the
same rules in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.service_classes import ServiceClass, ServiceClasses

SLO_SERIES = "llmserve:service_class_slo_requests_total"
BY = "model_name, service_class, target"


@dataclass(frozen=True)
class BurnAlert:
    name: str
    long_s: float  # both windows must burn faster than `factor`: the long one for significance,
    short_s: float  # the short one so the alert stops soon after the burn does
    factor: float  # times the error budget's even spend
    severity: str


BURN_ALERTS = (BurnAlert("LLMServeSLOFastBurn", 3600, 300, 14.4, "page"),
               BurnAlert("LLMServeSLOSlowBurn", 6 * 3600, 1800, 6.0, "ticket"))


@dataclass(frozen=True)
class AlertSettings:
    objective: float = 0.99  # share of a class's requests that must meet its targets
    class_objectives: dict[str, float] = field(default_factory=dict)  # per class, overriding `objective`
    job: str = "llmserve"  # the scrape job's name, for `up`
    time_scale: float = 1.0  # every window and `for:` is divided by this

    def objective_of(self, name: str) -> float:
        return self.class_objectives.get(name, self.objective)


def duration(seconds: float) -> str:
    """A PromQL duration: 3600 -> '1h', 300 -> '5m', 5 -> '5s', 0.5 -> '500ms'."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"a window must be positive, got {seconds!r}s")
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def error_ratio_name(window: str) -> str:
    return f"llmserve:service_class_slo_error_ratio:rate{window}"


def error_ratio_expr(window: str) -> str:
    """Requests that missed or were shed over all those judged, per class and target. Classes with
    requests but no misses read 0, not nothing, so a dashboard shows them."""
    bad = f'sum by ({BY}) (rate({SLO_SERIES}{{result!="met"}}[{window}]))'
    every = f"sum by ({BY}) (rate({SLO_SERIES}[{window}]))"
    return f"({bad} or {every} * 0) / {every}"


def _targets(cls: ServiceClass) -> str:
    parts = [f"{label} {_seconds(target)}" for label, target in (("TTFT", cls.ttft_target),
                                                                  ("E2E", cls.e2e_target)) if target is not None]
    return ", ".join(parts)


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _number(value: float) -> str:
    return f"{value:.6g}"


def burn_rules(classes: ServiceClasses, settings: AlertSettings) -> list[dict[str, Any]]:
    rules = []
    for cls in classes.classes:
        if cls.ttft_target is None and cls.e2e_target is None:
            continue
        objective = settings.objective_of(cls.name)
        for burn in BURN_ALERTS:
            long, short = (duration(s / settings.time_scale) for s in (burn.long_s, burn.short_s))
            threshold = _number(burn.factor * (1 - objective))
            selector = f'{{service_class="{cls.name}"}}'
            rules.append({
                "alert": burn.name,
                "expr": f"{error_ratio_name(long)}{selector} > {threshold} "
                        f"and {error_ratio_name(short)}{selector} > {threshold}",
                "labels": {"severity": burn.severity, "service_class": cls.name},
                "annotations": {
                    "summary": f"{cls.name} misses its {{{{ $labels.target }}}} target ({_targets(cls)}) "
                               f"{_number(burn.factor)}x faster than a {_number(objective * 100)}% objective allows",
                    "description": f"{{{{ $value | humanizePercentage }}}} of {cls.name} requests on "
                                   f"{{{{ $labels.model_name }}}} missed their {{{{ $labels.target }}}} target or "
                                   f"were shed over the last {long} (and over {short} too); the budget is "
                                   f"{_number((1 - objective) * 100)}%.",
                },
            })
    return rules


def serving_rules(settings: AlertSettings) -> list[dict[str, Any]]:
    def scaled(seconds: float) -> str:
        return duration(seconds / settings.time_scale)

    five = scaled(300)
    api = 'handler=~"/v1/.*|/tokenize|/detokenize"'
    http, failed = f"llmserve:http_requests_total{{{api}}}", f'llmserve:http_requests_total{{{api},status=~"5.."}}'
    return [
        {"alert": "LLMServeQueueGrowing",
         "expr": f"deriv(llmserve:num_requests_waiting[{five}]) > 0 and llmserve:num_requests_waiting > 0",
         "for": five, "labels": {"severity": "warning"},
         "annotations": {"summary": f"{{{{ $labels.model_name }}}}: the engine's queue has grown for {five} "
                                    "({{ $value | humanize }} requests/s)"}},
        {"alert": "LLMServeKVCacheNearlyFull", "expr": "llmserve:kv_cache_usage_perc > 0.95",
         "for": five, "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $labels.model_name }}: KV cache {{ $value | humanizePercentage }} full; "
                                    "requests will be preempted"}},
        {"alert": "LLMServeHighErrorRatio",
         "expr": f"sum by (model_name) (rate({failed}[{five}])) / sum by (model_name) (rate({http}[{five}])) > 0.05",
         "for": five, "labels": {"severity": "page"},
         "annotations": {"summary": "{{ $labels.model_name }}: {{ $value | humanizePercentage }} of API requests "
                                    f"answered 5xx over {five}"}},
        {"alert": "LLMServeEngineDown",
         "expr": f'up{{job="{settings.job}"}} == 0 or llmserve:engine_up == 0',
         "for": scaled(60), "labels": {"severity": "page"},
         "annotations": {"summary": "{{ $labels.instance }}: llmserve is not scraped, or its engine is not "
                                    "serving (/health is not 200)"}},
    ]


def alert_rules(classes: ServiceClasses, settings: AlertSettings | None = None) -> dict[str, Any]:
    """The rules file as a dict (Prometheus' `groups:` format)."""
    settings = settings or AlertSettings()
    windows = sorted({s / settings.time_scale for burn in BURN_ALERTS for s in (burn.long_s, burn.short_s)})
    recording = [{"record": error_ratio_name(duration(w)), "expr": error_ratio_expr(duration(w))}
                 for w in windows]
    return {"groups": [
        {"name": "llmserve-slo-error-ratios", "rules": recording},
        {"name": "llmserve-slo-burn", "rules": burn_rules(classes, settings)},
        {"name": "llmserve-serving", "rules": serving_rules(settings)},
    ]}


def render(classes: ServiceClasses, settings: AlertSettings | None = None) -> str:
    import yaml

    settings = settings or AlertSettings()
    described = "; ".join(f"{c.name}: {_targets(c) or 'no target'}" for c in classes.classes)
    header = (f"# Generated by `llmserve alerts` from the service classes ({described});\n"
              f"# objective {_number(settings.objective * 100)}%"
              + "".join(f", {name} {_number(value * 100)}%" for name, value in settings.class_objectives.items())
              + (f"; windows divided by {_number(settings.time_scale)}" if settings.time_scale != 1 else "")
              + ". Regenerate rather than edit, so the rules follow the classes' targets.\n")
    return header + yaml.safe_dump(alert_rules(classes, settings), sort_keys=False, width=10_000)
