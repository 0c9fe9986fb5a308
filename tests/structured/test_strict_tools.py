"""Strict tools under tool_choice "auto": the structural tag in each parser's format, compiled for the
real tokenizer, lets free text through and holds every call it starts to its function's schema."""

from __future__ import annotations

import json

import pytest

from llmserve.guided import GuidedDecoding
from llmserve.sampling_params import InvalidParameter
from llmserve.structured.compiler import GrammarCompiler
from llmserve.structured.guide import Guide
from llmserve.tool_calls import get_parser, parse_tool_calls
from llmserve.tool_calls.strict import has_strict_tools, strict_call_tag

WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}
LOOSE = {"type": "function", "function": {"name": "note", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, tokenizer.vocab_size + 64, tokenizer.eos_token_ids)


def guide_for(compiler, parser: str, parallel: bool = True) -> Guide:
    tag = strict_call_tag([WEATHER, LOOSE], get_parser(parser), parallel)
    return Guide(compiler.compile(GuidedDecoding(structural_tag=json.dumps(tag), param="tools")))


def accepts(guide: Guide, tokenizer, text: str) -> bool:
    return all(guide.accept(token) for token in tokenizer.encode(text, add_special_tokens=False))


def hermes_call(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def test_only_requests_with_a_strict_tool_get_a_tag() -> None:
    assert has_strict_tools([WEATHER, LOOSE]) and not has_strict_tools([LOOSE])


def test_hermes_free_text_and_valid_calls_pass_and_the_parser_reads_them(compiler, tokenizer) -> None:
    text = ("Let me check. " + hermes_call("get_weather", '{"city": "Paris"}') + " and "
            + hermes_call("note", '{"text": "x", "extra": [1]}'))
    guide = guide_for(compiler, "hermes")
    assert accepts(guide, tokenizer, text) and guide.is_completed
    parsed = parse_tool_calls(get_parser("hermes"), text)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("note", {"text": "x", "extra": [1]})]


@pytest.mark.parametrize("bad", [
    hermes_call("get_weather", '{"city": 3}'),  # the strict tool's schema
    hermes_call("get_weather", '{"city": "a", "town": "b"}'),  # no property it does not list
    hermes_call("unknown", "{}"),  # only the tools
    hermes_call("note", "[1]"),  # a loose tool still takes an object
    '<tool_call>\n{"name": "get_weather", "arguments":  {"city": "a"}}',  # compact JSON only
])
def test_hermes_calls_that_break_the_schema_or_format_are_refused(compiler, tokenizer, bad) -> None:
    assert not accepts(guide_for(compiler, "hermes"), tokenizer, "Sure. " + bad)


def test_parallel_false_ends_the_output_after_the_first_call(compiler, tokenizer) -> None:
    guide = guide_for(compiler, "hermes", parallel=False)
    assert accepts(guide, tokenizer, "Ok " + hermes_call("get_weather", '{"city": "Rome"}'))
    assert guide.is_completed and not accepts(guide, tokenizer, " more")


def test_llama3_calls_are_held_too(compiler, tokenizer) -> None:
    assert accepts(guide_for(compiler, "llama3"), tokenizer, '{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert not accepts(guide_for(compiler, "llama3"), tokenizer, '{"name": "get_weather", "parameters": {"city": 1}}')


def test_a_strict_schema_that_does_not_compile_names_tools(compiler) -> None:
    broken = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "nonsense"}}}
    tag = strict_call_tag([broken], get_parser("hermes"), True)
    with pytest.raises(InvalidParameter, match="tool call grammar does not compile") as caught:
        compiler.compile(GuidedDecoding(structural_tag=json.dumps(tag), param="tools"))
    assert caught.value.param == "tools"
