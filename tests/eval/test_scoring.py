"""Perplexity and top-1 guesses from our paged forward, against transformers on the same windows."""

from __future__ import annotations

import math

import torch

from llmserve.backends.select import select_backend
from llmserve.eval.scoring import score_text
from llmserve.model.loader import load_model
from tests.tiny_models import save_tiny_model


def test_scores_match_transformers_window_by_window(tmp_path):
    hf_model = save_tiny_model("llama", tmp_path)
    loaded = load_model(str(tmp_path), torch.float32, 512)
    ids = torch.randint(3, 256, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    scores = score_text(loaded.model, loaded.config, torch.float32, select_backend("cpu"), ids, window=64)
    nll, top1 = 0.0, []
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 64):
            window = ids[start:start + 64]
            logits = hf_model(torch.tensor([window])).logits[0, :-1].double()
            nll -= float(torch.log_softmax(logits, -1).gather(1, torch.tensor(window[1:]).unsqueeze(1)).sum())
            top1 += logits.argmax(-1).tolist()
    assert scores.num_scored == 150 - 3  # each of the 3 windows leaves out its first token
    assert math.isclose(scores.nll_sum, nll, rel_tol=1e-5)
    assert scores.top1 == top1
    assert math.isclose(scores.perplexity, math.exp(nll / 147), rel_tol=1e-5)
