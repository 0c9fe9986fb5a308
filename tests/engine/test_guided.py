"""Structured outputs through the engine, with a tiny random model wearing the embedded model's real
tokenizer: whatever the random weights prefer, the grammar decides what may come out."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from llmserve import LLM, SamplingParams
from llmserve.guided import GuidedDecoding
from llmserve.sampling_params import InvalidParameter
from tests.tiny_models import save_tiny_chat_model, save_tiny_model

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-chat")
    save_tiny_chat_model(path)
    return LLM(str(path), max_model_len=512, num_kv_blocks=256, block_size=16)


def _texts(llm, prompts, params):
    return [c.text for out in llm.generate(prompts, params) for c in out.outputs]


def test_json_schema_outputs_validate_over_many_seeds(llm) -> None:
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=80, guided=GuidedDecoding(json=SCHEMA))
              for seed in range(10)]
    outs = llm.generate(["Describe a person as JSON:"] * 10, params)
    for out in outs:
        choice = out.outputs[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.text), SCHEMA)
        assert list(json.loads(choice.text))[:2] == ["name", "age"]  # the schema's property order


def test_json_object_regex_and_choice(llm) -> None:
    # Any object: a random model may write one key for ever, so only finished ones must parse.
    for out in llm.generate(["{"], SamplingParams(temperature=1.0, n=4, seed=3, max_tokens=40,
                                                  guided=GuidedDecoding(json_object=True)))[0].outputs:
        assert out.text.startswith("{")
        assert out.finish_reason == "length" or isinstance(json.loads(out.text), dict)
    regex = r"[a-z]{2,4}-\d{3}"
    for text in _texts(llm, ["code:"], SamplingParams(temperature=1.0, n=4, seed=1, max_tokens=20,
                                                      guided=GuidedDecoding(regex=regex))):
        assert re.fullmatch(regex, text)
    choices = ["yes", "no", 'maybe "so"']
    for temperature in (0.0, 1.0):
        texts = _texts(llm, ["Answer:"] * 3, SamplingParams(temperature=temperature, max_tokens=20,
                                                            guided=GuidedDecoding(choice=choices)))
        assert all(text in choices for text in texts)


def test_n_sequences_each_follow_their_own_grammar_with_logprobs(llm) -> None:
    out = llm.generate("JSON:", SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=80, logprobs=2,
                                               guided=GuidedDecoding(json=SCHEMA)))[0]
    assert len(out.outputs) == 3
    for choice in out.outputs:
        jsonschema.validate(json.loads(choice.text), SCHEMA)
        assert len(choice.logprobs) == len(choice.token_ids)
        assert all(lp.logprob > float("-inf") for lp in choice.logprobs)


def test_a_stop_string_still_cuts_a_guided_output(llm) -> None:
    out = llm.generate("x", SamplingParams(temperature=0.0, max_tokens=20, stop=["-"],
                                           guided=GuidedDecoding(regex=r"ab-cd")))[0].outputs[0]
    assert out.text == "ab" and out.finish_reason == "stop"


def test_the_grammar_ends_the_request_even_with_ignore_eos(llm) -> None:
    out = llm.generate("x", SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True,
                                           guided=GuidedDecoding(choice=["done"])))[0].outputs[0]
    assert out.text == "done" and out.finish_reason == "stop"


def test_max_tokens_cuts_a_grammar_short(llm) -> None:
    out = llm.generate("x", SamplingParams(temperature=0.0, max_tokens=2,
                                           guided=GuidedDecoding(regex="[a-z]{40}")))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 2


def test_unconstrained_requests_get_the_same_tokens_beside_constrained_ones(llm) -> None:
    prompts = ["The weather today", "Once upon a time", "def main():"]
    plain = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    alone = [out.outputs[0].token_ids for out in llm.generate(prompts, plain)]
    guided = SamplingParams(temperature=0.0, max_tokens=40, guided=GuidedDecoding(json=SCHEMA))
    mixed = llm.generate([prompts[0], "JSON:", prompts[1], "JSON please:", prompts[2]],
                         [plain, guided, plain, guided, plain])
    assert [mixed[i].outputs[0].token_ids for i in (0, 2, 4)] == alone


def test_the_prefix_cache_serves_guided_requests(llm) -> None:
    prompt = "A long shared system prompt that fills at least one block of sixteen tokens, twice over. " * 2
    params = SamplingParams(temperature=0.0, max_tokens=30, guided=GuidedDecoding(regex=r"\d{2}"))
    first = llm.generate(prompt, params)[0]
    second = llm.generate(prompt, params)[0]
    assert second.num_cached_tokens and second.num_cached_tokens >= 16
    assert second.outputs[0].text == first.outputs[0].text and re.fullmatch(r"\d{2}", first.outputs[0].text)


def test_an_invalid_constraint_is_refused_before_it_runs(llm) -> None:
    with pytest.raises(InvalidParameter, match="regex does not compile") as info:
        llm.generate("x", SamplingParams(guided=GuidedDecoding(regex="(", param="guided_regex")))
    assert info.value.param == "guided_regex"
    assert not llm.engine.has_unfinished_requests()


def test_a_model_without_a_tokenizer_refuses_guided_requests(tmp_path) -> None:
    save_tiny_model("llama", tmp_path)
    engine = LLM(str(tmp_path), max_model_len=64, num_kv_blocks=16, block_size=16)
    with pytest.raises(InvalidParameter, match="need a tokenizer"):
        engine.generate([[1, 2, 3]], SamplingParams(guided=GuidedDecoding(regex="a")))


def test_min_tokens_holds_while_the_grammar_allows_more(llm) -> None:
    """The end of the output is blocked until min_tokens, as long as the grammar can go on."""
    def lengths(min_tokens: int) -> list[int]:
        params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=40, min_tokens=min_tokens,
                                 guided=GuidedDecoding(regex="(ab)+")) for seed in range(6)]
        outs = [out.outputs[0] for out in llm.generate(["Word:"] * 6, params)]
        assert all(re.fullmatch("(ab)+" if out.finish_reason == "stop" else "(ab)*a?", out.text) for out in outs)
        return [len(out.token_ids) for out in outs]

    assert min(lengths(0)) < 20  # left alone, the grammar lets some end early...
    assert min(lengths(20)) >= 20  # ...which min_tokens forbids


def test_a_grammar_that_allows_only_its_end_wins_over_min_tokens(llm) -> None:
    out = llm.generate("x", SamplingParams(temperature=0.0, max_tokens=20, min_tokens=10,
                                           guided=GuidedDecoding(choice=["done"])))[0].outputs[0]
    assert out.text == "done" and out.finish_reason == "stop"
