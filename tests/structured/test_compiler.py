"""Compiling constraints: what compiles, the 400-worthy errors naming their field, the bounded cache."""

from __future__ import annotations

import pytest
import xgrammar as xgr

from llmserve.guided import GuidedDecoding
from llmserve.sampling_params import InvalidParameter
from llmserve.structured.compiler import GrammarCompiler, choice_grammar
from llmserve.structured.tokenizer_info import tokenizer_info


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, tokenizer.vocab_size + 64, tokenizer.eos_token_ids, max_cached=3)


def test_tokenizer_info_reads_the_vocabulary(tokenizer) -> None:
    info = tokenizer_info(tokenizer, tokenizer.vocab_size + 64, tokenizer.eos_token_ids)
    assert info.vocab_type == xgr.VocabType.BYTE_LEVEL
    assert info.vocab_size == tokenizer.vocab_size + 64
    assert info.stop_token_ids == list(tokenizer.eos_token_ids)
    # Padding ids past the tokenizer's vocabulary are special: no mask ever allows them.
    assert set(range(tokenizer.vocab_size, tokenizer.vocab_size + 64)) <= set(info.special_token_ids)
    word = tokenizer.encode(" hello", add_special_tokens=False)
    assert [info.decoded_vocab[i] for i in word] == [b" hello"]


@pytest.mark.parametrize("guided", [
    GuidedDecoding(json={"type": "object", "properties": {"a": {"type": "integer"}}}),
    GuidedDecoding(json_object=True), GuidedDecoding(regex=r"\d{3}"),
    GuidedDecoding(choice=['say "hi"', "caf\u00e9\n"]), GuidedDecoding(grammar='root ::= "a" | "b"'),
])
def test_valid_constraints_compile(compiler, guided) -> None:
    assert isinstance(compiler.compile(guided), xgr.CompiledGrammar)


@pytest.mark.parametrize(("guided", "param", "match"), [
    (GuidedDecoding(json={"type": "foo"}, param="guided_json"), "guided_json", 'JSON schema.*"foo"'),
    (GuidedDecoding(regex="a(b"), "regex", "regex does not compile.*parenthesis"),
    (GuidedDecoding(grammar="root ::= missing", param="guided_grammar"), "guided_grammar", "missing"),
])
def test_invalid_constraints_name_their_field(compiler, guided, param, match) -> None:
    with pytest.raises(InvalidParameter, match=match) as info:
        compiler.compile(guided)
    assert info.value.param == param
    assert "/project/" not in str(info.value) and ".cc:" not in str(info.value)  # no C++ source locations


def test_equal_constraints_compile_once_and_the_cache_is_bounded(compiler) -> None:
    first = compiler.compile(GuidedDecoding(regex="x+", param="a"))
    assert compiler.compile(GuidedDecoding(regex="x+", param="b")) is first
    for pattern in ("y", "z", "w", "v"):
        compiler.compile(GuidedDecoding(regex=pattern))
    assert compiler.num_cached == 3
    assert compiler.compile(GuidedDecoding(regex="x+")) is not first  # evicted, compiled afresh


def test_choice_grammar_quotes_each_choice() -> None:
    assert choice_grammar(["a", 'b"c']) == 'root ::= "a" | "b\\"c"'
