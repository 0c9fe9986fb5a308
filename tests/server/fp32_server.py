"""The tiny chat model served in float32, and transformers' numbers for the same weights, for tests
that check what the server returns against HF to 1e-4."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from llmserve.engine.async_engine import AsyncEngine
from tests.timing import classes_without_targets

TOLERANCE = 1e-4


CHUNK = 64  # tokens per engine step: a longer prompt is prefilled in chunks, which must not change its numbers


def fp32_engine(model_path: Path) -> AsyncEngine:
    return AsyncEngine.from_args(str(model_path), dtype="float32", max_model_len=512, block_size=16,
                                 num_kv_blocks=256, max_num_seqs=64, max_num_batched_tokens=CHUNK,
                                 service_classes=classes_without_targets())


class Reference:
    """transformers' float32 forward over the checkpoint the server loaded."""

    def __init__(self, model_path: Path) -> None:
        import transformers

        self.causal = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.base = transformers.AutoModel.from_pretrained(model_path, dtype=torch.float32).eval()

    @torch.no_grad()
    def prompt_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """[len - 1, vocab]: row i is the log-softmax predicting token i + 1."""
        logits = self.causal(torch.tensor([token_ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)[:-1]

    @torch.no_grad()
    def embedding(self, token_ids: list[int]) -> list[float]:
        """Mean over the tokens of the final-normed last hidden states, L2-normalised."""
        states = self.base(torch.tensor([token_ids])).last_hidden_state[0].float()
        return torch.nn.functional.normalize(states.mean(dim=0), dim=0).tolist()


def assert_close(actual: list[float | None], expected: list[float | None], tol: float = TOLERANCE) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert (a is None) == (e is None), (actual, expected)
        if a is not None:
            assert math.isclose(a, e, abs_tol=tol), (a, e)
