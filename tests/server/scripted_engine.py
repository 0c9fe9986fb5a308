"""A real engine whose generations are scripted: the server's whole path (template, tokenizer, queue,
SSE) runs for real, but the text is whatever a test needs a model to have written, token by token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmserve.engine.outputs import CompletionOutput, RequestOutput


class ScriptedEngine:
    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.replies: list[str] = []  # the next requests' texts, in order; the last one repeats
        self.prompts: list[str | None] = []  # each request's rendered prompt, as it reached the engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def stream(self, prepared: Any) -> AsyncIterator[RequestOutput]:
        self.prompts.append(prepared.prompt)
        text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        tokenizer = self._engine.tokenizer
        ids = tokenizer.encode(text, add_special_tokens=False)
        sent = ""
        for count in range(1, len(ids) + 1):
            now = tokenizer.decode(ids[:count])
            last = count == len(ids)
            reason = "stop" if last else None
            outputs = [CompletionOutput(index=i, text=now, token_ids=ids[:count], finish_reason=reason,
                                        delta_text=now[len(sent):], delta_token_ids=ids[count - 1:count])
                       for i in range(prepared.params.n)]
            sent = now
            yield RequestOutput(prepared.request_id, prepared.prompt, prepared.prompt_token_ids, outputs, last)
