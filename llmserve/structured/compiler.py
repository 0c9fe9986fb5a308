"""GuidedDecoding -> xgrammar CompiledGrammar, built once per distinct constraint.

Compiling a JSON schema or grammar costs milliseconds to seconds: it runs when a request is
prepared (on the server's worker threads, never the event loop or the engine thread), and the
result is kept in a bounded LRU keyed by the constraint, so a repeated schema compiles once.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import xgrammar as xgr

from llmserve.sampling_params import InvalidParameter
from llmserve.structured.tokenizer_info import tokenizer_info

if TYPE_CHECKING:
    from llmserve.guided import GuidedDecoding
    from llmserve.model.tokenizer import Tokenizer

DEFAULT_MAX_CACHED = 256
# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: " and may carry a "Check failed" clause.
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


class GrammarCompiler:
    """Thread-safe: prepare() runs on several threads. The tokenizer's vocabulary is read on the
    first constrained request, so an engine that never gets one pays nothing."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_token_ids: Sequence[int],
                 max_cached: int = DEFAULT_MAX_CACHED, max_threads: int = 2) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._stop_token_ids = tuple(stop_token_ids)
        self._max_cached = max_cached
        self._max_threads = max_threads
        self._compiler: xgr.GrammarCompiler | None = None
        self._cache: OrderedDict[tuple[str, str], xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, guided: GuidedDecoding) -> xgr.CompiledGrammar:
        """Raises InvalidParameter naming the request field when the constraint does not compile."""
        key = guided.key
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
            compiler = self._xgr_compiler()
        # Outside the lock: one slow grammar must not hold up every other request's lookup.
        try:
            compiled = _compile(compiler, guided)
        except RuntimeError as exc:
            raise InvalidParameter(f"the {_what(guided.kind)} does not compile: {_message(exc)}",
                                   guided.param or guided.kind) from None
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return compiled

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def _xgr_compiler(self) -> xgr.GrammarCompiler:
        if self._compiler is None:
            info = tokenizer_info(self._tokenizer, self.vocab_size, self._stop_token_ids)
            # xgrammar's own cache is off: ours is bounded by entries and keyed by canonical constraints.
            self._compiler = xgr.GrammarCompiler(info, max_threads=self._max_threads, cache_enabled=False)
        return self._compiler


def _compile(compiler: xgr.GrammarCompiler, guided: GuidedDecoding) -> xgr.CompiledGrammar:
    kind = guided.kind
    if kind == "json":
        # Compact whitespace (json.dumps' separators): "any whitespace" lets a model pad for ever.
        return compiler.compile_json_schema(guided.schema_text, any_whitespace=False)
    if kind == "json_object":
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
    if kind == "regex":
        return compiler.compile_regex(guided.regex)
    if kind == "choice":
        return compiler.compile_grammar(choice_grammar(guided.choice or []))
    if kind == "structural_tag":
        return compiler.compile_structural_tag(json.dumps(compact_json(json.loads(guided.structural_tag or "{}"))))
    return compiler.compile_grammar(guided.grammar)


def compact_json(node: Any) -> Any:
    """A structural tag whose JSON schema contents become grammars of compact JSON: xgrammar writes a
    tag's schema with any whitespace, which would let a model pad for ever."""
    if isinstance(node, list):
        return [compact_json(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "json_schema" and "json_schema" in node:
        schema = json.dumps(node["json_schema"], ensure_ascii=False)
        return {"type": "grammar", "grammar": str(xgr.Grammar.from_json_schema(schema, any_whitespace=False))}
    return {key: compact_json(value) for key, value in node.items()}


def choice_grammar(choices: Sequence[str]) -> str:
    """EBNF for exactly one of `choices`: JSON string literals are EBNF string literals too."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _what(kind: str) -> str:
    return {"json": "JSON schema", "json_object": "JSON object grammar", "regex": "regex",
            "choice": "choice grammar", "grammar": "grammar", "structural_tag": "tool call grammar"}[kind]


def _message(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return _LOCATION.sub("", lines[0] if lines else str(exc)).strip()
