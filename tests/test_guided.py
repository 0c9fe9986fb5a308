"""GuidedDecoding: exactly one constraint, checked for shape, keyed by what it compiles to."""

from __future__ import annotations

import pytest

from llmserve.guided import GuidedDecoding
from llmserve.sampling_params import InvalidParameter, SamplingParams

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}


@pytest.mark.parametrize("kwargs", [
    {"json": SCHEMA}, {"json": '{"type": "string"}'}, {"json_object": True}, {"regex": "[a-z]+"},
    {"choice": ["yes", "no"]}, {"grammar": 'root ::= "a"'},
])
def test_one_constraint_is_accepted(kwargs) -> None:
    guided = GuidedDecoding(**kwargs)
    assert guided.kind == next(iter(kwargs))
    assert SamplingParams(guided=guided).guided is guided


def test_none_or_two_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidParameter, match="exactly one") as info:
        GuidedDecoding()
    assert info.value.param == "guided"
    with pytest.raises(InvalidParameter, match="got json, regex") as info:
        GuidedDecoding(json=SCHEMA, regex="x")
    assert info.value.param == "regex"
    with pytest.raises(InvalidParameter) as info:
        GuidedDecoding(json=SCHEMA, json_object=True, param="response_format")
    assert info.value.param == "response_format"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"json": "{not json"}, "not valid JSON"), ({"json": "[1]"}, "must be an object"),
    ({"choice": []}, "non-empty list"), ({"choice": ["a", 1]}, "non-empty list of strings"),
    ({"regex": ""}, "non-empty string"), ({"grammar": 3}, "non-empty string"),
])
def test_bad_shapes_name_their_field(kwargs, match) -> None:
    with pytest.raises(InvalidParameter, match=match) as info:
        GuidedDecoding(**kwargs)
    assert info.value.param == next(iter(kwargs))
    with pytest.raises(InvalidParameter) as info:
        GuidedDecoding(**kwargs, param="guided_x")
    assert info.value.param == "guided_x"


def test_the_key_ignores_spelling_and_source_but_keeps_property_order() -> None:
    as_dict = GuidedDecoding(json=SCHEMA, param="response_format")
    text = '{"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}'
    as_text = GuidedDecoding(json=text, param="guided_json")
    assert as_dict == as_text and hash(as_dict) == hash(as_text)
    reordered = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    assert GuidedDecoding(json=reordered) != as_dict  # properties are generated in their order
    assert GuidedDecoding(regex="a") != GuidedDecoding(grammar="a")


def test_sampling_params_refuses_another_type() -> None:
    with pytest.raises(InvalidParameter) as info:
        SamplingParams(guided={"json": SCHEMA})  # type: ignore[arg-type]
    assert info.value.param == "guided"
