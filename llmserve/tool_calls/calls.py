"""What a parser finds in generated text: pieces of plain content and complete calls."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ContentPiece:
    """Text outside any call, to be shown to the user as the message's content."""

    text: str


@dataclass(frozen=True)
class ParsedCall:
    """A call as the model wrote it: the function's name and its arguments as a JSON string."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCall:
    """A call as the API returns it, with the id a later `tool` message refers to."""

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def call_from_object(value: Any, argument_keys: tuple[str, ...] = ("arguments", "parameters")) -> ParsedCall | None:
    """A decoded JSON object as a call, or None when it is not one: it needs a string `name` and,
    if present, arguments that are an object (or a string holding one, as some models write them)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    key = next((k for k in argument_keys if k in value), None)
    arguments = {} if key is None else value[key]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))
