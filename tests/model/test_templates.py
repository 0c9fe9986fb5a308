from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.model.templates import packaged_template_path, read_chat_template
from llmserve.model.tokenizer import check_chat_template


def test_the_shipped_tools_template_is_found_by_name_or_path_and_compiles():
    text = read_chat_template("smollm2_tools")
    assert text == read_chat_template(str(packaged_template_path("smollm2_tools")))
    assert "<tool_call>" in text
    check_chat_template(text)


def test_a_missing_template_names_itself(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.jinja"):
        read_chat_template(str(tmp_path / "nope.jinja"))


def test_tools_and_tool_turns_render_as_transformers_renders_them(tmp_path: Path):
    import transformers

    from llmserve.model.embedded import embedded_model_path
    from llmserve.model.gguf_reader import read_gguf

    ours = read_gguf(embedded_model_path()).tokenizer
    ours.save(tmp_path)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    template = read_chat_template("smollm2_tools")
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}]
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "2"}]
    expected = theirs.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                          add_generation_prompt=True)
    assert ours.apply_chat_template(messages, tools=tools, chat_template=template) == expected
    assert "<tools>" in expected and "<tool_response>\n2\n</tool_response>" in expected
