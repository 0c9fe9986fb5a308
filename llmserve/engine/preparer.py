"""RequestPreparer: a request validated and tokenized against one engine's limits, off the engine thread.

LLMEngine prepares its own requests with it; a replica front (llmserve.replicas) builds one from the
facts a remote engine reports, so a bad request is refused with a 400 before it is routed anywhere.
No torch here: the front of a replicated server never loads the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmserve.pooling_params import PoolingParams
from llmserve.sampling_params import InvalidParameter, SamplingParams

if TYPE_CHECKING:
    import xgrammar as xgr

    from llmserve.engine.prompt_results import PromptResults
    from llmserve.model.tokenizer import Tokenizer
    from llmserve.service_classes import ServiceClasses
    from llmserve.structured.compiler import GrammarCompiler

Prompt = str | list[int] | dict


@dataclass
class PreparedRequest:
    """A validated, tokenized user request, ready to enter the engine (built off the engine thread)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams  # a pooling request's are SamplingParams(max_tokens=0): it generates nothing
    priority: int = 0  # the service class's rank
    grammar: xgr.CompiledGrammar | None = None  # params.guided, compiled
    pooling: PoolingParams | None = None  # set for an embedding request

    def prompt_results(self) -> PromptResults | None:
        """A fresh accumulator of what the prompt's chunks give besides KV, when the request wants any."""
        if self.params.prompt_logprobs is None and self.pooling is None:
            return None
        from llmserve.engine.prompt_results import PromptResults  # torch: only in the engine's process

        return PromptResults(len(self.prompt_token_ids), self.params.prompt_logprobs, self.pooling)


@dataclass
class RequestPreparer:
    tokenizer: Tokenizer | None
    service_classes: ServiceClasses
    max_model_len: int
    vocab_size: int
    pool_tokens: int  # tokens the KV pool holds: no prompt may need more
    grammars: GrammarCompiler | None = None  # None: the model has no tokenizer

    def prepare(self, request_id: str, prompt: Prompt, params: SamplingParams | PoolingParams | None = None,
                priority: int | str | None = None) -> PreparedRequest:
        """Validate and tokenize; raises ValueError on bad input. Safe to call from any thread.

        `priority` names a service class, by rank (0 = most important) or name; None is the default class.
        PoolingParams make an embedding request: it generates nothing, and its final output has `embedding`.
        """
        pooling = params if isinstance(params, PoolingParams) else None
        params = SamplingParams(max_tokens=0) if pooling is not None else params or SamplingParams()
        rank = self.service_classes.rank(priority)
        text, token_ids = self._tokenize(prompt)
        if not token_ids:
            raise ValueError("the prompt is empty")
        if params.max_tokens == 0:  # nothing to generate: the prompt may fill the whole context
            if len(token_ids) > self.max_model_len:
                raise ValueError(f"the prompt has {len(token_ids)} tokens; the context length is "
                                 f"{self.max_model_len}")
        elif len(token_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(token_ids)} tokens; the context length is {self.max_model_len} "
                             "and at least one must be left to generate")
        vocab = self.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        if params.stop_token_ids and max(params.stop_token_ids) >= vocab:
            # The sampler blocks them as logit columns until min_tokens: one past the vocabulary would
            # fail the whole batch's step.
            raise InvalidParameter(f"stop_token_ids must lie in [0, {vocab})", "stop_token_ids")
        if len(token_ids) >= self.pool_tokens:
            raise ValueError(f"the prompt has {len(token_ids)} tokens; the KV cache holds {self.pool_tokens}")
        return PreparedRequest(request_id, text, token_ids, params, rank, self.compile_guided(params), pooling)

    def compile_guided(self, params: SamplingParams) -> xgr.CompiledGrammar | None:
        guided = params.guided
        if guided is None:
            return None
        if self.grammars is None:
            raise InvalidParameter("structured outputs need a tokenizer, and this model has none",
                                   guided.param or guided.kind)
        return self.grammars.compile(guided)

    def _tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), _token_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, list):
            return None, _token_ids(prompt)
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a string, a list of token ids or a dict, not {type(prompt).__name__}")
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass prompt_token_ids")
        return prompt, self.tokenizer.encode(prompt)


def _token_ids(values: object) -> list[int]:
    if not isinstance(values, list | tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in values):
        raise ValueError("prompt_token_ids must be a list of integers")
    return list(values)
