"""POST /tokenize and POST /detokenize, in vLLM's shapes: the served model's own tokenizer, and its chat
template for messages, so a client can count a prompt's tokens exactly as a completion would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from llmserve.server.errors import bad_request
from llmserve.server.protocol import ChatMessage, text_only
from llmserve.server.unsupported import TOKENIZE_CHAT, refuse_unsupported

if TYPE_CHECKING:
    from llmserve.model.tokenizer import Tokenizer
    from llmserve.server.serving import Serving


class _TokenizerRequest(BaseModel):
    # Unknown fields are ignored, as on the other endpoints and in vLLM.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None


class TokenizeCompletionRequest(_TokenizerRequest):
    prompt: str
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool | None = False


class TokenizeChatRequest(_TokenizerRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: StrictBool = True
    # False by default, as in vLLM: the template writes the special tokens a chat needs itself.
    add_special_tokens: StrictBool = False
    return_token_strs: StrictBool | None = False

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return refuse_unsupported(data, TOKENIZE_CHAT)

    @model_validator(mode="after")
    def _text_only(self) -> TokenizeChatRequest:
        text_only(self.messages)
        return self


class DetokenizeRequest(_TokenizerRequest):
    tokens: list[StrictInt]


TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


def tokenize_model(data: Any) -> type[TokenizeCompletionRequest | TokenizeChatRequest]:
    """Which of the two bodies `data` is: vLLM tells them apart by `messages`, and so does this."""
    return TokenizeChatRequest if isinstance(data, dict) and "messages" in data else TokenizeCompletionRequest


async def tokenize(serving: Serving, body: TokenizeRequest) -> dict[str, Any]:
    serving.check_model(body.model)
    tokenizer = _tokenizer(serving)
    ids = await serving.off_loop(_token_ids, tokenizer, body)  # a long prompt or template takes a while
    token_strs = [tokenizer.backend.id_to_token(i) or "" for i in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": serving.engine.engine.max_model_len, "tokens": ids,
            "token_strs": token_strs}


async def detokenize(serving: Serving, body: DetokenizeRequest) -> dict[str, Any]:
    serving.check_model(body.model)
    tokenizer = _tokenizer(serving)
    vocab = serving.engine.engine.model_config.vocab_size
    if body.tokens and (min(body.tokens) < 0 or max(body.tokens) >= vocab):
        bad = next(t for t in body.tokens if not 0 <= t < vocab)
        raise bad_request(f"tokens: {bad} is not a token id of this model; ids lie in [0, {vocab})", "tokens")
    # Special tokens are kept, as vLLM keeps them: the text is what those ids are, not a reply.
    text = await serving.off_loop(tokenizer.decode, body.tokens, False)
    return {"prompt": text}


def _tokenizer(serving: Serving) -> Tokenizer:
    if serving.tokenizer is None:
        raise bad_request("this model has no tokenizer (its folder has no tokenizer.json)")
    return serving.tokenizer


def _token_ids(tokenizer: Tokenizer, body: TokenizeRequest) -> list[int]:
    if isinstance(body, TokenizeCompletionRequest):
        return _encode(tokenizer, body.prompt, body.add_special_tokens, "prompt")
    messages = [m.as_template_message() for m in body.messages]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt)
    except (ValueError, jinja2.TemplateError) as exc:  # no template, or the template's own raise_exception
        raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from None
    return _encode(tokenizer, text, body.add_special_tokens, "messages")


def _encode(tokenizer: Tokenizer, text: str, add_special_tokens: bool, param: str) -> list[int]:
    try:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except ValueError as exc:  # text that is not Unicode
        raise bad_request(f"{param}: {exc}", param) from None
