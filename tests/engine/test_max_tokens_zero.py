"""max_tokens=0: the prompt is prefilled (for its prompt logprobs) and nothing is generated."""

from __future__ import annotations

import pytest

from llmserve import LLM, SamplingParams
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-zero")
    save_tiny_model("llama", path)
    return LLM(str(path), dtype="float32", num_kv_blocks=64, max_model_len=64, block_size=4)


def test_finishes_with_no_tokens_and_length(llm):
    outs = llm.generate([{"prompt_token_ids": [5, 6, 7, 8, 9]}, {"prompt_token_ids": [3, 4]}],
                        SamplingParams(max_tokens=0, n=2))
    for out in outs:
        assert out.finished and out.error is None
        assert [(c.index, c.token_ids, c.text, c.finish_reason) for c in out.outputs] == [
            (0, [], "", "length"), (1, [], "", "length")]
        assert out.num_generated_tokens == 0 and out.prompt_logprobs is None
        assert out.metrics.first_token_time is None and out.metrics.finished_time is not None
    assert llm.engine.block_manager.num_free_blocks == 64


def test_with_prompt_logprobs_and_beside_generating_requests(llm):
    generating = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    alone = llm.generate({"prompt_token_ids": [9, 8, 7]}, generating)[0].outputs[0].token_ids
    outs = llm.generate([{"prompt_token_ids": [9, 8, 7]}, {"prompt_token_ids": [5, 6, 7, 8, 9]}],
                        [generating, SamplingParams(max_tokens=0, prompt_logprobs=1)])
    assert outs[0].outputs[0].token_ids == alone
    zero = outs[1]
    assert zero.outputs[0].token_ids == [] and zero.outputs[0].finish_reason == "length"
    assert [e.token_id if e else None for e in zero.prompt_logprobs] == [None, 6, 7, 8, 9]


def test_a_prompt_may_fill_the_context(llm):
    prompt = list(range(3, 67))  # max_model_len tokens: nothing is left to generate, and nothing is asked
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert out.outputs[0].finish_reason == "length" and len(out.prompt_logprobs) == 64
    with pytest.raises(ValueError, match="at least one must be left"):
        llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=1))
