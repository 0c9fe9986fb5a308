"""Tokenizer: a `tokenizers.Tokenizer` plus special-token ids and an HF-compatible chat template.

Built either from an HF folder (tokenizer.json + tokenizer_config.json) or from the vocabulary
a GGUF file carries in its metadata, rebuilt the way transformers rebuilds it so token ids agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import decoders, models, pre_tokenizers, processors


class Tokenizer:
    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        extra_eos_token_ids: Sequence[int] = (),
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.bos_token = backend.id_to_token(bos_token_id) if bos_token_id is not None else None
        self.eos_token = backend.id_to_token(eos_token_id) if eos_token_id is not None else None
        eos = [eos_token_id] if eos_token_id is not None else []
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys([*eos, *extra_eos_token_ids]))
        self.chat_template = chat_template
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        special = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        special.update(i for i in (bos_token_id, eos_token_id) if i is not None)
        self.all_special_ids: list[int] = sorted(special)
        self._templates: dict[str, jinja2.Template] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its compiled templates (jinja's do not pickle), which compile again on use:
        a replicated server's replicas send their tokenizer to the front."""
        return {**self.__dict__, "_templates": {}}

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path) -> Tokenizer:
        """Load tokenizer.json, tokenizer_config.json and (if present) generation_config.json."""
        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        config = _read_json(path / "tokenizer_config.json")
        generation = _read_json(path / "generation_config.json")

        bos_id = _token_id(backend, config.get("bos_token"))
        eos_id = _token_id(backend, config.get("eos_token"))
        extra_eos = generation.get("eos_token_id")
        extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos or [])
        if eos_id is None and extra_eos:
            eos_id = extra_eos[0]
        if config.get("add_bos_token") and bos_id is not None:
            _ensure_bos(backend, bos_id)
        template = _chat_template(config, path)
        return cls(backend, bos_token_id=bos_id, eos_token_id=eos_id, extra_eos_token_ids=extra_eos,
                   chat_template=template)

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF metadata (`tokenizer.ggml.*` keys, `tokenizer.chat_template`)."""
        backend = _backend_from_gguf_fields(fields)
        extra = [fields[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in fields]
        return cls(
            backend,
            bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
            extra_eos_token_ids=[int(i) for i in extra],
            chat_template=fields.get("tokenizer.chat_template"),
        )

    # --- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            # tokenizers refuses a str that is not valid Unicode (a lone surrogate, say from a JSON
            # "\ud800" escape) with a TypeError about its argument's type; say what is really wrong.
            _check_unicode(text)
            raise

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json so `from_folder` can read them back."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path / "tokenizer.json"))
        config = {"bos_token": self.bos_token, "eos_token": self.eos_token, "chat_template": self.chat_template}
        (path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
        if len(self.eos_token_ids) > 1:
            generation = {"eos_token_id": list(self.eos_token_ids)}
            (path / "generation_config.json").write_text(json.dumps(generation, indent=2))

    # --- chat ---------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None, chat_template: str | None = None, **kwargs: Any
    ) -> str:
        """Render messages the way transformers' `apply_chat_template(..., tools=..., tokenize=False)`
        does: `tools` is the list of OpenAI-shaped tool dicts. `chat_template` overrides this tokenizer's."""
        template = self._compiled(chat_template)
        variables: dict[str, Any] = {"documents": None,
                                     "bos_token": self.bos_token or "", "eos_token": self.eos_token or ""}
        variables.update(kwargs)
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools or None,
                               **variables)

    def _compiled(self, source: str | None) -> jinja2.Template:
        source = source or self.chat_template
        if not source:
            raise ValueError("this tokenizer has no chat template; pass a plain prompt instead")
        # A server renders with one template for its whole life: keep each compiled once.
        if source not in self._templates:
            self._templates[source] = _compile_template(source)
        return self._templates[source]

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: list[dict[str, Any]] | None = None, chat_template: str | None = None) -> dict[str, Any]:
        """A conversation as the engine's prompt dict: the rendered text and its token ids."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                        chat_template=chat_template)
        # The template already wrote BOS and the role markers: adding special tokens would double them.
        return {"prompt": text, "prompt_token_ids": self.encode(text, add_special_tokens=False)}


# --- helpers --------------------------------------------------------------------------------------


def _check_unicode(text: Any) -> None:
    if not isinstance(text, str):
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the text holds a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X} at index "
                         f"{exc.start}), which is not Unicode and cannot be tokenized") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _token_id(backend: tokenizers.Tokenizer, token: Any) -> int | None:
    if isinstance(token, dict):  # serialized AddedToken
        token = token.get("content")
    if not token:
        return None
    return backend.token_to_id(token)


def _ensure_bos(backend: tokenizers.Tokenizer, bos_id: int) -> None:
    # tokenizer.json usually adds BOS itself; only install a post-processor when it does not.
    if backend.encode("a", add_special_tokens=True).ids[:1] == [bos_id]:
        return
    bos = backend.id_to_token(bos_id)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


def _chat_template(config: dict[str, Any], folder: Path) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = folder / "chat_template.jinja"
    if not template and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return template or None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Not jinja's built-in tojson: that one HTML-escapes, which chat prompts must not do.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(Extension):
    """Accept `{% generation %}...{% endgeneration %}` (HF marks assistant spans for training
    masks with it) and render the body unchanged: prompts need no masks."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def check_chat_template(source: str) -> None:
    """ValueError, naming the problem, unless `source` compiles as a chat template."""
    _compile_template(source)


def _compile_template(source: str) -> jinja2.Template:
    # Same environment as HF: sandboxed, trim/lstrip blocks, loop controls and the helper globals.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ValueError(f"the chat template is not valid Jinja: {exc}") from None


# --- GGUF vocabularies ----------------------------------------------------------------------------
# llama.cpp token types (gguf.TokenType), kept local so this module does not need `gguf`.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

# Split regexes of the byte-level vocabularies whose pre-tokenizer is not GPT-2's, keyed by
# `tokenizer.ggml.pre`. The BPE merges were learned on chunks cut this way, so encoding must cut alike.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PATTERNS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}


def _backend_from_gguf_fields(fields: Mapping[str, Any]) -> tokenizers.Tokenizer:
    model = fields.get("tokenizer.ggml.model")
    tokens = fields.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError("the GGUF file carries no tokenizer vocabulary (tokenizer.ggml.tokens)")
    if model == "gpt2":
        backend, vocab_spelling = _byte_level_backend(fields, tokens)
    elif model == "llama":
        backend, vocab_spelling = _sentencepiece_backend(fields, tokens), None
    else:
        raise ValueError(f"unsupported GGUF tokenizer model {model!r}; supported: 'gpt2' (byte-level BPE), "
                         "'llama' (SentencePiece BPE)")
    _add_gguf_special_tokens(backend, tokens, fields.get("tokenizer.ggml.token_type") or (), vocab_spelling)
    if model == "llama":
        # Byte-level files get no automatic BOS even when they ask for one (transformers does the
        # same; their chat templates write the start token themselves). SentencePiece ones do.
        _install_bos_eos(backend, fields)
    return backend


def _byte_level_backend(fields: Mapping[str, Any], tokens: list[str]) -> tuple[tokenizers.Tokenizer, str]:
    alphabet = "".join(sorted(pre_tokenizers.ByteLevel.alphabet()))
    vocab: dict[str, int] = {}
    respell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for index, token in enumerate(tokens):
        if token.strip(alphabet):
            # Stored as raw text instead of in the byte alphabet the merges use: respell it.
            token = "".join(piece for piece, _ in respell.pre_tokenize_str(token))
        vocab[token] = index
    merges = [tuple(merge.split(" ", 1)) for merge in fields.get("tokenizer.ggml.merges") or ()]
    backend = tokenizers.Tokenizer(_bpe(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(fields.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    return backend, alphabet


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    pattern = _SPLIT_PATTERNS.get(pre or "")
    if pattern is not None:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    # Everything else, SmolLM's "smollm" included, gets GPT-2's split, as in transformers. (llama.cpp
    # and SmolLM's own tokenizer.json isolate each \p{N} first; its merges never join ASCII digits,
    # so ids differ only on non-ASCII numerals such as " ½", where transformers is followed.)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _sentencepiece_backend(fields: Mapping[str, Any], tokens: list[str]) -> tokenizers.Tokenizer:
    vocab = {token: index for index, token in enumerate(tokens)}
    stored = fields.get("tokenizer.ggml.merges")
    if stored:
        merges = [tuple(merge.split(" ", 1)) for merge in stored]
    else:
        merges = _merges_from_scores(tokens, vocab, fields.get("tokenizer.ggml.scores"))
    unk_id = fields.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    backend = tokenizers.Tokenizer(_bpe(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _bpe(**kwargs: Any) -> models.BPE:
    try:
        return models.BPE(**kwargs)
    except Exception as exc:  # tokenizers raises a bare Exception for inconsistent vocab/merges
        raise ValueError(f"the GGUF tokenizer is inconsistent: {exc}") from None


def _merges_from_scores(
    tokens: list[str], vocab: dict[str, int], scores: Sequence[float] | None
) -> list[tuple[str, str]]:
    """SentencePiece files list scores, not merges: every split of a token into two vocabulary
    pieces is a merge, ranked by the token's score (then longer left, then longer right piece)."""
    if scores is None:
        raise ValueError("the GGUF vocabulary has neither merges nor scores")
    ranked: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores, strict=False):
        pairs = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        pairs.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        ranked.extend((score, len(left), len(right), left, right) for left, right in pairs)
    ranked.sort(key=lambda r: r[:3], reverse=True)  # stable: ties keep vocabulary order
    return [(left, right) for *_, left, right in ranked]


def _add_gguf_special_tokens(
    backend: tokenizers.Tokenizer, tokens: list[str], token_types: Sequence[int], alphabet: str | None
) -> None:
    """Control tokens become special added tokens (one id each, dropped by skip_special_tokens);
    user-defined ones become plain added tokens so they are never split."""
    special_types = (_CONTROL,) if alphabet is not None else (_CONTROL, _UNKNOWN)
    special, user = [], []
    for token, kind in zip(tokens, token_types, strict=False):
        # A "control" token outside the byte alphabet is a mislabelled ordinary one in a byte-level file.
        if alphabet is not None and token.strip(alphabet):
            continue
        if kind in special_types:
            special.append(tokenizers.AddedToken(token, special=True, normalized=False))
        elif kind == _USER_DEFINED:
            user.append(tokenizers.AddedToken(token, special=False, normalized=False))
    backend.add_special_tokens(special)
    backend.add_tokens(user)


def _install_bos_eos(backend: tokenizers.Tokenizer, fields: Mapping[str, Any]) -> None:
    tokens = fields["tokenizer.ggml.tokens"]
    single, pair, specials = ["$A:0"], ["$A:0", "$B:1"], []
    bos_id, eos_id = fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id")
    if fields.get("tokenizer.ggml.add_bos_token", True) and bos_id is not None:
        bos = tokens[bos_id]
        single, pair = [f"{bos}:0", *single], [f"{bos}:0", "$A:0", f"{bos}:1", "$B:1"]
        specials.append((bos, bos_id))
    if fields.get("tokenizer.ggml.add_eos_token", False) and eos_id is not None:
        eos = tokens[eos_id]
        single, pair = [*single, f"{eos}:0"], [*pair, f"{eos}:1"]
        specials.append((eos, eos_id))
    if specials:
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
