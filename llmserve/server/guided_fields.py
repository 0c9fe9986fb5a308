"""The request fields that constrain output: OpenAI's `response_format` and vLLM's `guided_*`
extensions (vLLM's names and meanings), turned into one GuidedDecoding.

Only shape is checked here; whether a schema, regex or grammar compiles is found when the request
is prepared, off the event loop, and a failure is a 400 naming the field it came from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from llmserve.guided import GuidedDecoding
from llmserve.sampling_params import InvalidParameter


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(max_length=64)
    description: str | None = None
    # `schema` would shadow a BaseModel attribute; the wire name stays "schema".
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class GuidedFields(BaseModel):
    """Mixed into both endpoints' bodies."""

    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def guided(self) -> GuidedDecoding | None:
        """The one constraint the body asks for, or None; two at once is an InvalidParameter."""
        asked = self._asked()
        if len(asked) > 1:
            raise InvalidParameter(f"only one of {', '.join(asked)} may be given", asked[1])
        if not asked:
            return None
        field = asked[0]
        if field == "response_format":
            return self._from_response_format()
        kind = field.removeprefix("guided_")
        return GuidedDecoding(**{kind: getattr(self, field)}, param=field)

    def _asked(self) -> list[str]:
        asked = [f for f in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
                 if getattr(self, f) is not None]
        if self.response_format is not None and self.response_format.type != "text":
            asked.insert(0, "response_format")
        return asked

    def _from_response_format(self) -> GuidedDecoding:
        fmt = self.response_format
        assert fmt is not None
        if fmt.type == "json_object":
            return GuidedDecoding(json_object=True, param="response_format")
        if fmt.json_schema is None:
            raise InvalidParameter("response_format of type json_schema needs a json_schema",
                                   "response_format.json_schema")
        # OpenAI lets the schema be left out: any JSON object then.
        schema = fmt.json_schema.schema_
        if schema is None:
            return GuidedDecoding(json_object=True, param="response_format")
        return GuidedDecoding(json=schema, param="response_format.json_schema.schema")
