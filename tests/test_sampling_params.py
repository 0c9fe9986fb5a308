from __future__ import annotations

import pytest

from llmserve.sampling_params import SEED_MAX, SEED_MIN, InvalidParameter, SamplingParams, SamplingType


def test_defaults() -> None:
    p = SamplingParams()
    assert p.n == 1 and p.max_tokens == 16 and p.temperature == 1.0
    assert p.stop == [] and p.stop_token_ids == []
    assert not p.is_greedy and p.sampling_type == SamplingType.RANDOM
    assert not p.has_penalties


def test_stop_normalisation() -> None:
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "bc")).stop == ["a", "bc"]
    assert SamplingParams(stop=["a", "bcd"]).max_stop_len == 3
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]


def test_sampling_type() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=0.0, seed=3).sampling_type == SamplingType.GREEDY
    assert SamplingParams(temperature=0.7, seed=3).sampling_type == SamplingType.RANDOM_SEED
    assert SamplingParams(temperature=0.7).sampling_type == SamplingType.RANDOM


def test_top_k_minus_one_means_off() -> None:
    assert SamplingParams(top_k=-1).top_k == 0


def test_max_tokens_none_allowed() -> None:
    assert SamplingParams(max_tokens=None).max_tokens is None


def test_max_tokens_zero_and_prompt_logprobs_allowed() -> None:
    params = SamplingParams(max_tokens=0, prompt_logprobs=0)
    assert params.max_tokens == 0 and params.prompt_logprobs == 0
    assert SamplingParams(prompt_logprobs=20).prompt_logprobs == 20
    assert SamplingParams().prompt_logprobs is None


def test_max_tokens_message_says_zero_is_allowed() -> None:
    with pytest.raises(InvalidParameter, match=r"max_tokens must be None or an integer >= 0, got -1"):
        SamplingParams(max_tokens=-1)


def test_penalties_flag() -> None:
    assert SamplingParams(repetition_penalty=1.2).has_penalties
    assert SamplingParams(presence_penalty=-0.5).has_penalties
    assert SamplingParams(frequency_penalty=2.0).has_penalties


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 1.1}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt_logprobs": True}, "prompt_logprobs"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": 21}, "logprobs"),
        ({"stop": ""}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"seed": 1.5}, "seed"),
        ({"n": True}, "n"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_boundaries_accepted() -> None:
    SamplingParams(top_p=1.0, min_p=1.0, logprobs=20, presence_penalty=-2.0, frequency_penalty=2.0)
    SamplingParams(logprobs=0, min_tokens=16, max_tokens=16, temperature=0.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"repetition_penalty": 1e-40}, "repetition_penalty"),
        ({"repetition_penalty": 1e6}, "repetition_penalty"),
        ({"presence_penalty": float("-inf")}, "presence_penalty"),
        ({"temperature": "hot"}, "temperature"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 10**5000}, "seed"),
        ({"min_tokens": 10**5000, "max_tokens": 4}, "min_tokens"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [3, -1]}, "stop_token_ids"),
    ],
)
def test_invalid_parameter_carries_the_field(kwargs: dict, field: str) -> None:
    # A ValueError subclass, so callers that catch ValueError keep working; `param` is for servers.
    with pytest.raises(InvalidParameter, match=field) as caught:
        SamplingParams(**kwargs)
    assert caught.value.param == field
    assert len(str(caught.value)) < 200  # a huge integer is described, not printed


def test_seed_accepts_the_signed_64_bit_range() -> None:
    assert SamplingParams(seed=SEED_MIN).seed == -(2**63)
    assert SamplingParams(seed=SEED_MAX).seed == 2**63 - 1
