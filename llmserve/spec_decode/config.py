"""The speculative-decoding settings, in vLLM's names (`speculative_config={"method": "ngram", ...}`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

METHODS = ("ngram",)


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"  # prompt lookup: drafts copied from the request's own prompt and output
    num_speculative_tokens: int = 4  # K: drafts verified per step and sequence
    prompt_lookup_max: int = 4  # the longest n-gram looked up
    prompt_lookup_min: int = 2  # the shortest n-gram that may propose

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown speculative method {self.method!r}; choose from {', '.join(METHODS)}")
        for name in ("num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"speculative_config.{name} must be a positive integer, got {value!r}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("speculative_config.prompt_lookup_min must not exceed prompt_lookup_max")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | SpeculativeConfig | None) -> SpeculativeConfig | None:
        """vLLM's dict form; None (or no method) turns speculation off. Unknown keys are an error, so a
        misspelt setting is not silently ignored."""
        if values is None or isinstance(values, SpeculativeConfig):
            return values
        values = dict(values)
        if values.get("method") is None:
            return None
        unknown = set(values) - {"method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"}
        if unknown:
            raise ValueError(f"unknown speculative_config keys: {', '.join(sorted(unknown))}")
        lookup_max, lookup_min = values.get("prompt_lookup_max"), values.get("prompt_lookup_min")
        # As vLLM does: one bound given alone sets the other (min defaults to at most max).
        if lookup_max is None and lookup_min is not None:
            values["prompt_lookup_max"] = max(lookup_min, cls.prompt_lookup_max)
        if lookup_min is None and lookup_max is not None:
            values["prompt_lookup_min"] = min(lookup_max, cls.prompt_lookup_min)
        return cls(**values)
