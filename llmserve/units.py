"""Parsing of human-written durations and rates, shared by the service-class settings, the bench and the CLI."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str | int | float) -> float:
    """'500ms' -> 0.5, '0.5s' -> 0.5, '10m' -> 600, '1h' -> 3600; a bare number is milliseconds (vLLM's
    unit for --goodput)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a duration cannot be negative, got {text!r}")
        return float(text) / 1000
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"a duration is like 500ms, 0.5s, 10m or 1h, got {text!r}")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "ms").lower()]


_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([kmgt]i?b)?\s*(?:/s)?\s*$", re.IGNORECASE)
_BYTES = {"": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bandwidth(text: str) -> float | None:
    """'3.35TB/s' -> 3.35e12 bytes/s, '900GiB/s', '2e11' (bytes/s); 'auto' -> None (measure it)."""
    if text.strip().lower() == "auto":
        return None
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"a bandwidth is like 3.35TB/s, 900GiB/s or auto, got {text!r}")
    return float(match.group(1)) * _BYTES[(match.group(2) or "").lower()]
