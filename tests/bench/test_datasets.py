"""Datasets: what each kind sends, and clear errors for files that do not fit."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmserve.bench.datasets import (
    WORDS,
    DatasetSpec,
    jsonl_requests,
    load_dataset,
    random_words,
)
from llmserve.bench.workload import FIRST_PLAIN_TOKEN_ID


def test_random_ids_and_text_have_the_asked_lengths() -> None:
    ids = load_dataset(DatasetSpec("random", 20, input_len=(5, 9), output_len=(3, 3), vocab_size=500, seed=1))
    assert all(5 <= len(r.prompt) == r.input_len <= 9 and r.output_len == 3 for r in ids)
    assert all(FIRST_PLAIN_TOKEN_ID <= t < 500 for r in ids for t in r.prompt)
    text = load_dataset(DatasetSpec("random", 20, input_len=(5, 9), form="text", seed=1))
    assert all(isinstance(r.prompt, str) and len(r.prompt.split()) == r.input_len for r in text)
    assert all(word in WORDS for r in text for word in r.prompt.split())


@pytest.mark.slow
def test_random_words_are_one_token_each_for_the_embedded_tokenizer() -> None:
    from llmserve.model.embedded import embedded_model_path
    from llmserve.model.gguf_reader import read_gguf

    tokenizer = read_gguf(embedded_model_path()).tokenizer
    assert len(tokenizer.encode(random_words(random.Random(0), 300), add_special_tokens=False)) == 300


def test_shared_prefix_ids_share_exactly_the_prefix() -> None:
    spec = DatasetSpec("shared-prefix", 6, input_len=(4, 4), prefix_len=32, num_prefixes=2, vocab_size=1000)
    reqs = load_dataset(spec)
    assert all(len(r.prompt) == r.input_len == 36 for r in reqs)
    prefixes = [tuple(r.prompt[:32]) for r in reqs]
    assert prefixes[0::2] == [prefixes[0]] * 3 and prefixes[1::2] == [prefixes[1]] * 3
    assert prefixes[0] != prefixes[1]
    assert len({tuple(r.prompt[32:]) for r in reqs}) == 6  # the questions differ


def test_shared_prefix_chat_puts_the_prefix_in_the_system_message() -> None:
    reqs = load_dataset(DatasetSpec("shared-prefix", 3, input_len=(5, 5), prefix_len=40, form="chat"))
    systems = {r.prompt[0]["content"] for r in reqs}
    assert len(systems) == 1 and len(next(iter(systems)).split()) == 40
    assert all(r.prompt[1]["role"] == "user" and len(r.prompt[1]["content"].split()) == 5 for r in reqs)


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_prompts_conversations_and_sharegpt(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Tell me a joke.", "max_tokens": 9},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "Name a color."},
                           {"from": "gpt", "value": "x" * 40}]},
    ])
    reqs = jsonl_requests(path, 3, output_len=(7, 7))
    by_kind = {type(r.prompt).__name__ + str(r.output_len): r for r in reqs}
    assert by_kind["str9"].prompt == "Tell me a joke."
    assert by_kind["list7"].prompt[1] == {"role": "user", "content": "Hi"}  # --output-len for lines without one
    assert by_kind["str10"].prompt == "Name a color."  # the reply's 40 characters are ~10 tokens
    assert by_kind["str9"].input_len == 4  # 15 characters at ~4 per token


def test_jsonl_repeats_and_accepts_a_json_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    reqs = jsonl_requests(path, 5, output_len=(2, 2), seed=3)
    assert sorted(r.prompt for r in reqs) == ["a", "a", "a", "b", "b"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"prompt": "a"}\n{oops\n', "not JSONL"),
    ('{"text": "a"}\n', "item 1: needs a 'prompt' string"),
    ('{"prompt": "a"}\n{"prompt": ""}\n', "item 2: the prompt is empty"),
    ('{"prompt": "a", "max_tokens": 0}\n', "positive integer"),
    ('{"conversations": [{"from": "gpt", "value": "x"}]}\n', "no human turn"),
    ('{"messages": [{"role": "user"}]}\n', "string 'role' and 'content'"),
    ("", "holds no prompts"),
])
def test_jsonl_errors_say_where(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        jsonl_requests(path, 2, output_len=(2, 2))


def test_missing_file_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match="cannot read dataset"):
        load_dataset(DatasetSpec("jsonl:/nonexistent/file.jsonl", 2))
    with pytest.raises(ValueError, match="unknown dataset 'sharegpt'"):
        load_dataset(DatasetSpec("sharegpt", 2))
    with pytest.raises(ValueError, match="num-prompts"):
        load_dataset(DatasetSpec("random", 0))
