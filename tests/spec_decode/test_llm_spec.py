"""LLM(speculative_config=...): vLLM's keyword; requests with a grammar are decoded without drafts."""

from __future__ import annotations

import pytest

from llmserve import LLM, SamplingParams
from llmserve.guided import GuidedDecoding
from tests.tiny_models import save_tiny_chat_model

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1}


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-chat")
    save_tiny_chat_model(path)
    return str(path)


def test_guided_requests_match_and_never_draft(path):
    params = SamplingParams(temperature=0.0, max_tokens=30,
                            guided=GuidedDecoding(regex="(ab|cd){3,8}x"))
    prompt = "ab cd ab cd ab cd ab cd"
    plain = LLM(path, max_model_len=512, num_kv_blocks=256, block_size=16).generate(prompt, params)
    llm = LLM(path, max_model_len=512, num_kv_blocks=256, block_size=16, speculative_config=NGRAM)
    spec = llm.generate(prompt, params)
    assert spec[0].outputs[0].text == plain[0].outputs[0].text
    assert llm.engine.spec_stats.num_draft_tokens == 0


def test_greedy_text_is_unchanged_with_drafts(path):
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    prompt = "Repeat after me: the quick brown fox jumps over the lazy dog. the quick brown fox jumps"
    plain = LLM(path, max_model_len=512, num_kv_blocks=256, block_size=16).generate(prompt, params)
    llm = LLM(path, max_model_len=512, num_kv_blocks=256, block_size=16, speculative_config=NGRAM)
    assert llm.generate(prompt, params)[0].outputs[0].token_ids == plain[0].outputs[0].token_ids
    assert llm.engine.spec_stats.num_draft_tokens > 0
