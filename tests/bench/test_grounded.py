"""The input-grounded dataset: seeded instructions whose answers quote their passage."""

from __future__ import annotations

import pytest

from llmserve.bench.datasets import WORDS, DatasetSpec, load_dataset


def test_prompts_hold_their_passage_and_are_seeded():
    spec = DatasetSpec(kind="input-grounded", num_prompts=6, input_len=(40, 60), output_len=(50, 50), form="text")
    requests = load_dataset(spec)
    assert requests == load_dataset(spec)
    assert requests != load_dataset(DatasetSpec(**{**spec.__dict__, "seed": 1}))
    assert [r.output_len for r in requests] == [50] * 6
    for request in requests:
        instruction, _, passage = request.prompt.partition("\n\n")
        assert instruction and 40 <= len(passage.split()) <= 60
    assert requests[0].prompt.startswith("Repeat the following text exactly")
    assert all(word in WORDS for word in requests[0].prompt.partition("\n\n")[2].split())


def test_chat_form_and_ids_refused():
    chat = load_dataset(DatasetSpec(kind="input-grounded", num_prompts=2, input_len=(20, 20), form="chat"))
    assert chat[0].prompt[0]["role"] == "user" and "\n\n" in chat[0].prompt[0]["content"]
    with pytest.raises(ValueError, match="text or chat"):
        load_dataset(DatasetSpec(kind="input-grounded", num_prompts=2))
