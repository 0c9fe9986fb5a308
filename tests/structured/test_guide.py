"""The batch's mask: guided rows get -inf for every forbidden id, the others are untouched, and a
batch without guides allocates no bitmask."""

from __future__ import annotations

import pytest
import torch
import xgrammar as xgr

from llmserve.guided import GuidedDecoding
from llmserve.runner.sampler import Sampler
from llmserve.sampling_params import SamplingParams
from llmserve.structured import guide as guide_module
from llmserve.structured.compiler import GrammarCompiler
from llmserve.structured.guide import Guide, apply_guides

PADDING = 64


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, tokenizer.vocab_size + PADDING, tokenizer.eos_token_ids)


def test_guided_rows_are_masked_and_the_others_untouched(compiler, tokenizer) -> None:
    vocab = tokenizer.vocab_size + PADDING
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    original = logits.clone()
    guide = Guide(compiler.compile(GuidedDecoding(choice=["yes", "no"])))
    apply_guides(logits, [None, guide, None])
    assert torch.equal(logits[0], original[0]) and torch.equal(logits[2], original[2])
    allowed = (logits[1] > float("-inf")).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([t]) in ("yes", "no", "y", "n", "ye") for t in allowed)
    assert max(allowed) < tokenizer.vocab_size  # padding ids are never allowed
    assert torch.equal(logits[1, allowed], original[1, allowed])


def test_the_guide_follows_accepted_tokens_to_the_end(compiler, tokenizer) -> None:
    guide = Guide(compiler.compile(GuidedDecoding(regex="ab")))
    for token in tokenizer.encode("ab", add_special_tokens=False):
        assert guide.accept(token)
    assert guide.is_completed and not guide.is_terminated
    assert not guide.accept(tokenizer.encode("c", add_special_tokens=False)[0])
    assert guide.accept(tokenizer.eos_token_ids[0]) and guide.is_terminated


def test_a_batch_without_guides_allocates_no_bitmask(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a bitmask was allocated for a batch without guides")

    monkeypatch.setattr(xgr, "allocate_token_bitmask", refuse)
    monkeypatch.setattr(guide_module.xgr, "allocate_token_bitmask", refuse)
    logits = torch.randn(2, 32)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=1)]
    out = Sampler(seed=0).sample(logits, params, [[1], [1]], [[], []], [None, None], [[], []], [None, None])
    assert len(out.token_ids) == 2


def test_the_sampler_picks_only_allowed_tokens(compiler, tokenizer) -> None:
    """bf16 logits are widened for the mask; greedy and sampled rows alike; logprobs see the mask."""
    vocab = tokenizer.vocab_size + PADDING
    sampler = Sampler(seed=0)
    digits = compiler.compile(GuidedDecoding(regex="[0-9]"))
    for seed in range(5):
        logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
        params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, logprobs=3)]
        gens = [None, torch.Generator().manual_seed(seed)]
        out = sampler.sample(logits, params, [[1], [1]], [[], []], gens, None, [Guide(digits), Guide(digits)])
        assert all(tokenizer.decode([token]).isdigit() for token in out.token_ids)
        logprobs = out.logprobs[1]
        assert all(tokenizer.decode([token]).isdigit() for token, _ in logprobs.top)
        assert sum(2.718281828 ** lp for _, lp in logprobs.top) <= 1.0001
