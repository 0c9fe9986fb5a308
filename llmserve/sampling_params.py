"""User-facing sampling parameters for a generation request.

Kept free of torch so the API/CLI layers can build and validate requests
without pulling in the runtime.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Temperatures below this are treated as greedy: dividing logits by a
# near-zero value only amplifies float noise, and argmax is what users mean.
_GREEDY_EPS = 1e-5
MAX_LOGPROBS = 20


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        # Normalise first so validation and all later consumers see one shape.
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0  # -1 is the OpenAI/vLLM spelling of "disabled"
        self._validate()

    def _validate(self) -> None:
        _check(_is_int(self.n) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}")
        _check(self.temperature >= 0.0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        _check(
            _is_int(self.top_k) and self.top_k >= 0,
            f"top_k must be -1, 0 (disabled) or a positive integer, got {self.top_k!r}",
        )
        _check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        _check(
            self.repetition_penalty > 0.0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(-2.0 <= value <= 2.0, f"{name} must be in [-2, 2], got {value}")
        _check(self.seed is None or _is_int(self.seed), f"seed must be an integer or None, got {self.seed!r}")
        self._validate_lengths()
        self._validate_stops()
        _check(
            self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
            f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}",
        )

    def _validate_lengths(self) -> None:
        _check(
            self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
            f"max_tokens must be None or an integer >= 1, got {self.max_tokens!r}",
        )
        _check(
            _is_int(self.min_tokens) and self.min_tokens >= 0,
            f"min_tokens must be an integer >= 0, got {self.min_tokens!r}",
        )
        _check(
            self.max_tokens is None or self.min_tokens <= self.max_tokens,
            f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})",
        )

    def _validate_stops(self) -> None:
        assert isinstance(self.stop, list) and isinstance(self.stop_token_ids, list)
        for s in self.stop:
            _check(isinstance(s, str), f"stop must contain strings, got {s!r}")
            _check(s != "", "stop must not contain empty strings")
        for t in self.stop_token_ids:
            _check(_is_int(t) and t >= 0, f"stop_token_ids must be non-negative integers, got {t!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def sampling_type(self) -> SamplingType:
        if self.is_greedy:
            return SamplingType.GREEDY
        return SamplingType.RANDOM if self.seed is None else SamplingType.RANDOM_SEED

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def max_stop_len(self) -> int:
        assert isinstance(self.stop, list)
        return max((len(s) for s in self.stop), default=0)


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `n=True` is certainly a caller bug.
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
