"""User-facing sampling parameters for a generation request.

Kept free of torch so the API/CLI layers can build and validate requests
without pulling in the runtime.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmserve.guided import GuidedDecoding

# Temperatures below this are treated as greedy: dividing logits by a
# near-zero value only amplifies float noise, and argmax is what users mean.
_GREEDY_EPS = 1e-5
MAX_LOGPROBS = 20
# Seeds are signed 64-bit integers, as in vLLM's API: what an int64 column or a C client can hold.
# torch seeds are unsigned 64-bit; the engine maps a seed onto them by wrapping (mod 2**64).
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
# The penalty divides or multiplies float32 logits: outside this range a logit can overflow to inf
# (or 0 * inf give NaN), and no useful setting lies beyond it (HF suggests about 1.0-1.5).
REPETITION_PENALTY_MIN = 0.01
REPETITION_PENALTY_MAX = 100.0


class InvalidParameter(ValueError):
    """A sampling value outside its range; `param` names the field, so a server can tell its client which."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


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
    # Logprobs of the prompt's own tokens, each given the ones before it, with this many alternatives
    # (0: the token's alone). Taken from the raw model logits: no penalties or temperature apply.
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    guided: GuidedDecoding | None = None  # what the output must match (structured outputs)

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
        _check(_is_int(self.n) and self.n >= 1, "n", f"n must be an integer >= 1, got {_short(self.n)}")
        self._validate_floats()
        _check(
            _is_int(self.top_k) and self.top_k >= 0, "top_k",
            f"top_k must be -1, 0 (disabled) or a positive integer, got {_short(self.top_k)}",
        )
        _check(
            self.seed is None or (_is_int(self.seed) and SEED_MIN <= self.seed <= SEED_MAX), "seed",
            f"seed must be None or an integer in [-2**63, 2**63 - 1], got {_short(self.seed)}",
        )
        self._validate_lengths()
        self._validate_stops()
        _check(
            self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS), "logprobs",
            f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {_short(self.logprobs)}",
        )
        _check(
            self.prompt_logprobs is None or (_is_int(self.prompt_logprobs)
                                             and 0 <= self.prompt_logprobs <= MAX_LOGPROBS), "prompt_logprobs",
            f"prompt_logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {_short(self.prompt_logprobs)}",
        )
        from llmserve.guided import GuidedDecoding  # here: guided.py imports InvalidParameter from this module

        _check(self.guided is None or isinstance(self.guided, GuidedDecoding), "guided",
               f"guided must be None or a GuidedDecoding, got {type(self.guided).__name__}")

    def _validate_floats(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            # NaN fails every comparison below, but inf would pass `>= 0`: reject both by name.
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            _check(ok, name, f"{name} must be a finite number, got {value!r}")
        _check(self.temperature >= 0.0, "temperature",
               f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"top_p must be in (0, 1], got {self.top_p}")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"min_p must be in [0, 1], got {self.min_p}")
        _check(
            REPETITION_PENALTY_MIN <= self.repetition_penalty <= REPETITION_PENALTY_MAX, "repetition_penalty",
            f"repetition_penalty must be in [{REPETITION_PENALTY_MIN}, {REPETITION_PENALTY_MAX}], "
            f"got {self.repetition_penalty}",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(-2.0 <= value <= 2.0, name, f"{name} must be in [-2, 2], got {value}")

    def _validate_lengths(self) -> None:
        _check(
            # 0 is valid: the prompt is only prefilled (for its prompt logprobs) and nothing is generated.
            self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 0), "max_tokens",
            f"max_tokens must be None or an integer >= 0, got {_short(self.max_tokens)}",
        )
        _check(
            _is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens",
            f"min_tokens must be an integer >= 0, got {_short(self.min_tokens)}",
        )
        _check(
            self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
            f"min_tokens ({_short(self.min_tokens)}) must be <= max_tokens ({_short(self.max_tokens)})",
        )

    def _validate_stops(self) -> None:
        assert isinstance(self.stop, list) and isinstance(self.stop_token_ids, list)
        for s in self.stop:
            _check(isinstance(s, str), "stop", f"stop must contain strings, got {s!r}")
            # An empty stop string matches before any text, so every choice would end at once.
            _check(s != "", "stop", "stop must not contain empty strings")
        for t in self.stop_token_ids:
            _check(_is_int(t) and t >= 0, "stop_token_ids",
                   f"stop_token_ids must be non-negative integers, got {_short(t)}")

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


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidParameter(message, param)


def _short(value: object) -> str:
    """repr for a message: an integer of thousands of digits is cut (and repr would refuse past 4300)."""
    if isinstance(value, int) and value.bit_length() > 100:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)
