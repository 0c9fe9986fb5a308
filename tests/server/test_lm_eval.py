"""A real third-party client: lm-evaluation-harness's `local-completions` model scores a shipped
multiple-choice task (tests/server/lm_eval_task) against the live server by loglikelihood.

Each choice is one `echo: true, logprobs: 1, max_tokens: 1` request with the prompt as token ids;
lm-eval sums `token_logprobs[ctxlen:-1]` of each choice, so the numbers it reports are exactly the
server's prompt logprobs, and they must equal what transformers computes on the same checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.server.live_server import MODEL_NAME
from tests.timing import PATIENCE_S

pytest.importorskip("lm_eval", reason="lm-eval is in the test extra")

TASK_DIR = Path(__file__).with_name("lm_eval_task")
TASK = "llmserve_tiny_mc"
NUM_DOCS = sum(1 for line in (TASK_DIR / "questions.jsonl").read_text().splitlines() if line.strip())
NUM_CHOICES = 4
TOLERANCE = 1e-3  # our fp32 engine against transformers' fp32 forward, summed over a few tokens

# lm-eval's two client paths: one prompt per request on the calling thread (requests), and
# several token-id prompts per request sent concurrently (aiohttp).
CLIENTS = {"sequential": {"batch_size": 1, "num_concurrent": 1},
           "batched-concurrent": {"batch_size": 4, "num_concurrent": 3}}


@dataclass
class Run:
    results: dict[str, Any]  # lm-eval's aggregate metrics for the task
    samples: list[dict[str, Any]]  # one per document: its arguments and (loglikelihood, is_greedy) answers


@pytest.fixture(scope="module")
def offline():
    """Nothing here may reach a hub: the task's questions and the tokenizer are local files."""
    import datasets
    import huggingface_hub

    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            patch.setenv(name, "1")
        # Both libraries read these at import, which another test may already have done.
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module", params=list(CLIENTS))
def run(request, server, chat_model_path, offline) -> Run:
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_args = {"base_url": server.base_url + "/completions", "model": MODEL_NAME,
                  "tokenizer": str(chat_model_path), "tokenizer_backend": "huggingface",
                  # one try: a failed request raises out of simple_evaluate instead of being retried
                  "max_retries": 1, "timeout": int(PATIENCE_S), **CLIENTS[request.param]}
    out = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=[TASK],
                                  task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
                                  bootstrap_iters=0, log_samples=True)
    assert out is not None
    return Run(out["results"][TASK], out["samples"][TASK])


@pytest.fixture(scope="module")
def reference(chat_model_path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(chat_model_path, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_model_path)
    return model, tokenizer


def transformers_loglikelihood(reference, context: str, continuation: str) -> tuple[float, bool | None]:
    """The continuation's summed log-probability given the context, tokenized as lm-eval does for a
    causal model (the whole text, split after the context's tokens), and whether greedy decoding
    would produce it: None when a position's top two logits are too close for that to be decided."""
    model, tokenizer = reference
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    total, greedy, decided = 0.0, True, True
    for position in range(len(context_ids), len(whole)):
        row = logprobs[position - 1]
        total += float(row[whole[position]])
        top2 = row.topk(2).values
        decided = decided and float(top2[0] - top2[1]) > TOLERANCE
        greedy = greedy and int(row.argmax()) == whole[position]
    return total, greedy if decided else None


def test_every_document_is_scored_with_a_sane_accuracy(run):
    assert run.results["sample_len"] == NUM_DOCS
    for metric in ("acc,none", "acc_norm,none"):
        assert 0.0 <= run.results[metric] <= 1.0
    assert sorted(sample["doc_id"] for sample in run.samples) == list(range(NUM_DOCS))
    for sample in run.samples:
        answers = sample["filtered_resps"]
        assert len(answers) == NUM_CHOICES
        for loglikelihood, is_greedy in answers:
            assert math.isfinite(loglikelihood) and loglikelihood < 0.0
            assert isinstance(is_greedy, bool)
        chosen = max(range(NUM_CHOICES), key=lambda i: answers[i][0])
        assert sample["acc"] == float(chosen == sample["target"])


def test_the_loglikelihoods_equal_transformers(run, reference):
    for sample in run.samples:
        for (context, continuation), (loglikelihood, is_greedy) in zip(sample["arguments"], sample["filtered_resps"],
                                                                       strict=True):
            expected, greedy = transformers_loglikelihood(reference, context, continuation)
            assert loglikelihood == pytest.approx(expected, abs=TOLERANCE), (context, continuation)
            if greedy is not None:
                assert is_greedy == greedy, (context, continuation)
