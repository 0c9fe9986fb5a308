"""Builds RequestOutputs from Requests, tracking what each caller has already been sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from llmserve.engine.request import Request, RequestStatus

if TYPE_CHECKING:
    from llmserve.engine.engine import PreparedRequest


@dataclass
class _Sent:
    prompt: str | None
    prompt_token_ids: list[int]
    num_tokens: list[int] = field(default_factory=list)  # per child: tokens already reported
    text: list[str] = field(default_factory=list)  # per child: text already reported


class OutputBuilder:
    def __init__(self) -> None:
        self._sent: dict[str, _Sent] = {}

    def register(self, prepared: PreparedRequest, children: list[Request]) -> None:
        self._sent[prepared.request_id] = _Sent(prepared.prompt, prepared.prompt_token_ids,
                                                [0] * len(children), [""] * len(children))

    def forget(self, parent_id: str) -> None:
        self._sent.pop(parent_id, None)

    def build(self, parent_id: str, children: list[Request]) -> RequestOutput:
        sent = self._sent[parent_id]
        errors = [c.error for c in children if c.status == RequestStatus.FINISHED_ERROR]
        finished = bool(errors) or all(c.is_finished for c in children)
        outputs = [self._completion(sent, child) for child in children]
        first = children[0]
        metrics = RequestMetrics(first.times.arrival, first.times.first_scheduled, first.times.first_token,
                                 max((c.times.finished or 0.0) for c in children) if finished else None,
                                 sum(c.num_preemptions for c in children))
        results = first.prompt_results
        return RequestOutput(parent_id, sent.prompt, sent.prompt_token_ids, outputs, finished,
                             errors[0] if errors else None, metrics, first.num_cached_tokens,
                             prompt_logprobs=results.prompt_logprobs() if results is not None else None,
                             embedding=results.embedding() if results is not None and finished else None)

    def _completion(self, sent: _Sent, child: Request) -> CompletionOutput:
        i = child.index
        if child.detokenizer is not None:
            child.detokenizer.get_next_output_text(child.is_finished)
            text = child.detokenizer.output_text
        else:
            text = ""
        tokens = list(child.output_token_ids)
        delta_tokens = tokens[sent.num_tokens[i]:]
        delta_text = text[len(sent.text[i]):]
        sent.num_tokens[i], sent.text[i] = len(tokens), text
        return CompletionOutput(
            index=i, text=text, token_ids=tokens, finish_reason=child.status.finish_reason,
            stop_reason=child.stop_reason,
            logprobs=list(child.logprobs) if child.params.logprobs is not None else None,
            delta_text=delta_text, delta_token_ids=delta_tokens,
        )
