"""Values a client chooses (seeds at the ends of their range, stop token ids, text that is not Unicode)
run or raise a ValueError naming the field; never an overflow or a TypeError from inside."""

from __future__ import annotations

import pytest
import torch

from llmserve import LLM, SamplingParams
from llmserve.engine.engine import choice_seed
from llmserve.sampling_params import SEED_MAX, SEED_MIN, InvalidParameter
from tests.tiny_models import save_tiny_chat_model, save_tiny_model

VOCAB = 256  # tests.tiny_models' default


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model("llama", path)
    return LLM(str(path), num_kv_blocks=64, block_size=4, max_model_len=64)


def _tokens(llm: LLM, params: SamplingParams) -> list[list[int]]:
    (out,) = llm.generate({"prompt_token_ids": [3, 4, 5]}, params)
    return [list(o.token_ids) for o in out.outputs]


@pytest.mark.parametrize(("seed", "index", "expected"), [
    (7, 2, 9),  # in range: the plain sum, as before
    (-1, 0, 2**64 - 1),  # torch's own reading of -1
    (-1, 1, 0),
    (SEED_MAX, 1, 2**63),
    (2**64 - 1, 1, 0),  # the top of torch's range wraps instead of overflowing
    (SEED_MIN, 3, 2**63 + 3),
])
def test_choice_seed_wraps_into_torch_range(seed, index, expected):
    assert choice_seed(seed, index) == expected
    torch.Generator().manual_seed(choice_seed(seed, index))  # accepted


def test_choice_seed_matches_what_torch_did_with_the_plain_sum():
    for seed, index in ((-5, 2), (-(2**63), 0), (2**62, 15)):
        plain = torch.Generator().manual_seed(seed + index).initial_seed()
        assert torch.Generator().manual_seed(choice_seed(seed, index)).initial_seed() == plain


@pytest.mark.parametrize("seed", [SEED_MAX, SEED_MIN, -1])
def test_seeds_at_the_ends_of_the_range_run_with_n_choices(llm, seed):
    params = SamplingParams(n=3, temperature=1.0, seed=seed, max_tokens=6, ignore_eos=True)
    first = _tokens(llm, params)
    assert [len(t) for t in first] == [6, 6, 6]
    assert first == _tokens(llm, params)  # still reproducible


def test_choice_one_of_seed_minus_one_is_choice_zero_of_seed_zero(llm):
    wrapped = _tokens(llm, SamplingParams(n=2, temperature=1.0, seed=-1, max_tokens=6, ignore_eos=True))[1]
    assert wrapped == _tokens(llm, SamplingParams(temperature=1.0, seed=0, max_tokens=6, ignore_eos=True))[0]


@pytest.mark.parametrize("ids", [[VOCAB], [3, 10**6]])
def test_stop_token_ids_outside_the_vocabulary_are_refused(llm, ids):
    with pytest.raises(InvalidParameter, match="stop_token_ids") as caught:
        llm.generate({"prompt_token_ids": [3, 4]}, SamplingParams(stop_token_ids=ids, min_tokens=2, max_tokens=4))
    assert caught.value.param == "stop_token_ids"
    assert not llm.engine.has_unfinished_requests()
    # The last id of the vocabulary is a token like any other.
    assert _tokens(llm, SamplingParams(stop_token_ids=[VOCAB - 1], min_tokens=2, max_tokens=3, ignore_eos=True))


def test_lone_surrogates_are_value_errors_offline(tmp_path):
    save_tiny_chat_model(tmp_path)
    chat = LLM(str(tmp_path), num_kv_blocks=32, block_size=16, max_model_len=256)
    with pytest.raises(ValueError, match="surrogate"):
        chat.generate("x\ud800y", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="surrogate"):
        chat.chat([{"role": "user", "content": "x\udfffy"}], SamplingParams(max_tokens=2))
    # A surrogate pair written as one code point is ordinary text.
    assert chat.generate("x\U0001f642y", SamplingParams(max_tokens=2))[0].outputs[0].token_ids
