"""What a request's output must match: a JSON schema, any JSON object, a regex, one of some strings,
a grammar, or an xgrammar structural tag (free text with constrained regions: how strict tools hold
the calls a model writes under tool_choice "auto"). Plain Python: the engine compiles it
(llmserve/structured/) into a token mask.

Exactly one constraint is set. Validation here is about shape only (types, emptiness); whether a
schema, regex or grammar compiles is decided by the grammar engine when the request is prepared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmserve.sampling_params import InvalidParameter

KINDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


@dataclass(frozen=True)
class GuidedDecoding:
    json: dict[str, Any] | str | None = None  # a JSON schema, as a dict or its JSON text
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # EBNF (GBNF) as xgrammar takes it
    structural_tag: str | None = None  # xgrammar's structural tag, as JSON text
    # The request field this came from ("response_format", "guided_json", "tools", ...): errors name it.
    # It never changes what is generated, so equality and the cache key leave it out.
    param: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.choice is not None and not isinstance(self.choice, list):
            object.__setattr__(self, "choice", list(self.choice) if isinstance(self.choice, tuple) else self.choice)
        set_kinds = [kind for kind in KINDS if self._is_set(kind)]
        if len(set_kinds) != 1:
            named = ", ".join(set_kinds) or "none"
            raise InvalidParameter(f"guided decoding takes exactly one of {', '.join(KINDS)}; got {named}",
                                   self.param or (set_kinds[1] if len(set_kinds) > 1 else "guided"))
        self._validate(set_kinds[0])

    def _is_set(self, kind: str) -> bool:
        value = getattr(self, kind)
        return value is not False if kind == "json_object" else value is not None

    def _validate(self, kind: str) -> None:
        param = self.param or kind
        value = getattr(self, kind)
        if kind == "json":
            if isinstance(self.json, str):
                try:
                    parsed = json.loads(self.json)
                except ValueError as exc:
                    raise InvalidParameter(f"the JSON schema is not valid JSON: {exc}", param) from None
            else:
                parsed = self.json
            if not isinstance(parsed, dict | bool):
                raise InvalidParameter("a JSON schema must be an object", param)
        elif kind == "json_object":
            if value is not True:
                raise InvalidParameter("json_object must be true or false", param)
        elif kind == "structural_tag":
            try:
                parsed = json.loads(value) if isinstance(value, str) else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise InvalidParameter("a structural tag must be a JSON object's text", param)
        elif kind == "choice":
            if not value or not all(isinstance(c, str) for c in value):
                raise InvalidParameter("choice must be a non-empty list of strings", param)
        elif not isinstance(value, str) or not value:
            raise InvalidParameter(f"{kind} must be a non-empty string", param)

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if self._is_set(kind))

    @property
    def schema_text(self) -> str:
        """The JSON schema as compact text. Keys keep their order: properties are generated in it."""
        schema = json.loads(self.json) if isinstance(self.json, str) else self.json
        return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the compiled grammar: equal keys compile to the same mask."""
        kind = self.kind
        if kind == "json":
            return kind, self.schema_text
        if kind == "json_object":
            return kind, ""
        if kind == "choice":
            return kind, json.dumps(self.choice, ensure_ascii=False)
        return kind, getattr(self, kind)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GuidedDecoding) and self.key == other.key
