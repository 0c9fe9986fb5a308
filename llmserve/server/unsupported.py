"""Request fields we know and do not honour: each is refused with a 400 naming it, never silently ignored.

A field left at its default (absent, null, or the value that asks for nothing) passes, so clients
that always send the whole parameter set keep working. Fields nobody has heard of are still ignored,
as OpenAI and vLLM do; these are the ones a client sends meaning something we would not do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmserve.sampling_params import InvalidParameter

COMPLETIONS = "completions"
CHAT = "chat"
TOKENIZE_CHAT = "tokenize_chat"  # /tokenize with messages, which renders the chat template too
BOTH = (COMPLETIONS, CHAT)
TEMPLATE = (CHAT, TOKENIZE_CHAT)


Accepts = Callable[[Any, dict[str, Any]], bool]  # (the field's value, the whole body)


def _unset(value: Any, _: dict[str, Any]) -> bool:
    return value is None or value == {} or value == [] or value is False


def _null(value: Any, _: dict[str, Any]) -> bool:
    # For an object whose presence alone asks for something: `web_search_options: {}` turns search on.
    return value is None


def _is(*accepted: Any) -> Accepts:
    return lambda value, _: value is None or any(value == a and type(value) is type(a) for a in accepted)


def _n_of_n(value: Any, body: dict[str, Any]) -> bool:
    # best_of == n asks for no ranking: every candidate is returned.
    return value is None or (type(value) is int and value == body.get("n", 1))


@dataclass(frozen=True)
class Unsupported:
    field: str
    endpoints: tuple[str, ...]
    why: str
    accepts: Accepts = _unset  # the values that ask for nothing we would have to do


UNSUPPORTED: tuple[Unsupported, ...] = (
    # OpenAI's fields.
    Unsupported("logit_bias", BOTH, "biasing logits is not implemented"),
    Unsupported("best_of", (COMPLETIONS,), "generating best_of candidates and returning the n most likely is not "
                "implemented; best_of may only equal n", _n_of_n),
    Unsupported("suffix", (COMPLETIONS,), "insertion (a suffix after the completion) is not implemented",
                _is("")),
    Unsupported("functions", (CHAT,), "the legacy function-calling fields are not implemented; use tools"),
    Unsupported("function_call", (CHAT,), "the legacy function-calling fields are not implemented; use tool_choice"),
    Unsupported("audio", (CHAT,), "this model generates text only", _null),
    Unsupported("modalities", (CHAT,), "this model generates text only; send [\"text\"] or nothing",
                lambda value, _: value is None or value == ["text"]),
    Unsupported("prediction", (CHAT,), "predicted outputs are not implemented", _null),
    Unsupported("store", (CHAT,), "this server stores no completions"),
    Unsupported("metadata", (CHAT,), "this server stores no completions to tag"),
    Unsupported("service_tier", (CHAT,), "this server has one tier ('auto' or 'default'); its service classes "
                "are chosen with `priority` or the X-Priority header", _is("auto", "default")),
    Unsupported("web_search_options", (CHAT,), "this server cannot search the web", _null),
    Unsupported("reasoning_effort", (CHAT,), "this model is not a reasoning model"),
    Unsupported("verbosity", (CHAT,), "verbosity control is not implemented"),
    Unsupported("moderation", (CHAT,), "this server runs no moderation", _null),
    Unsupported("prompt_cache_retention", (CHAT,), "the prefix cache keeps blocks while memory allows; "
                "retention cannot be chosen"),
    Unsupported("prompt_cache_options", (CHAT,), "the prefix cache needs no breakpoints or options",
                _null),
    # vLLM's extensions we do not implement.
    Unsupported("use_beam_search", BOTH, "beam search is not implemented"),
    Unsupported("length_penalty", BOTH, "length_penalty only applies to beam search, which is not implemented",
                _is(1, 1.0)),
    Unsupported("allowed_token_ids", BOTH, "restricting the vocabulary is not implemented"),
    Unsupported("bad_words", BOTH, "banning words is not implemented"),
    Unsupported("logits_processors", BOTH, "custom logits processors are not implemented"),
    Unsupported("truncate_prompt_tokens", BOTH, "prompts are never truncated; shorten the prompt"),
    Unsupported("return_tokens_as_token_ids", BOTH, "tokens are returned as text only"),
    Unsupported("add_special_tokens", (COMPLETIONS,), "completion prompts always get the tokenizer's special "
                "tokens; send token ids to control them exactly", _is(True)),
    Unsupported("add_special_tokens", (CHAT,), "the chat template writes the special tokens itself",
                _is(False)),
    Unsupported("echo", (CHAT,), "echoing the last message into the reply is not implemented (completions "
                "honour echo)"),
    Unsupported("continue_final_message", TEMPLATE, "continuing the final message is not implemented"),
    Unsupported("chat_template", TEMPLATE, "a per-request chat template is not accepted"),
    Unsupported("chat_template_kwargs", TEMPLATE, "extra chat template variables are not accepted"),
    Unsupported("documents", TEMPLATE, "documents for the chat template are not accepted"),
    Unsupported("tools", (TOKENIZE_CHAT,), "tools are rendered by chat completions only"),
    Unsupported("guided_decoding_backend", BOTH, "structured outputs always use xgrammar", _is("xgrammar")),
    Unsupported("guided_whitespace_pattern", BOTH, "JSON is generated without free whitespace"),
)


def refuse_unsupported(data: Any, endpoint: str) -> Any:
    """A pydantic `mode="before"` check: InvalidParameter (a 400 naming the field) for the first
    field of `data` that asks for something this server does not do; `data` itself otherwise."""
    if not isinstance(data, dict):
        return data  # not an object: the model's own validation says so
    for entry in UNSUPPORTED:
        if endpoint in entry.endpoints and entry.field in data and not entry.accepts(data[entry.field], data):
            raise InvalidParameter(f"{entry.field} is not supported: {entry.why}", entry.field)
    return data


def refused_fields(endpoint: str) -> list[str]:
    """The refused fields of one endpoint, in order, for the documentation test."""
    return list(dict.fromkeys(e.field for e in UNSUPPORTED if endpoint in e.endpoints))
