"""What the engine hands back to callers, shaped like vLLM's offline API."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.engine.step_stats import StepStats


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    rank: int  # 1 = most likely
    top: list[tuple[int, float]]  # best first, len == params.logprobs


@dataclass
class CompletionOutput:
    index: int
    text: str  # everything generated so far (cumulative)
    token_ids: list[int]
    finish_reason: str | None = None  # stop | length | abort | error
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    logprobs: list[TokenLogprobs] | None = None
    delta_text: str = ""  # text new since the previous output for this request
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    finished_time: float | None
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    error: str | None = None
    metrics: RequestMetrics | None = None
    num_cached_tokens: int | None = None  # prompt tokens whose KV came from the prefix cache (None: not yet run)
    # With SamplingParams.prompt_logprobs: one entry per prompt token, the first None (nothing predicts
    # it); set from the first output after the prefill on.
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    embedding: list[float] | None = None  # a pooling request's result, on its final output

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of KV blocks in use, 0..1
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache (cumulative)
    prefix_cache_hits: int = 0  # of those, tokens whose KV was found cached
    steps: StepStats = field(default_factory=StepStats)  # tokens and sequences per step, preemptions
    weight_bytes_per_step: int = 0  # model-weight bytes one forward reads
    cache_config: dict[str, str] = field(default_factory=dict)  # what cache_config_info reports
    spec_decode_num_drafts: int = 0  # speculative verifications of a sequence with drafts (cumulative)
    spec_decode_num_draft_tokens: int = 0  # draft tokens verified (cumulative)
    spec_decode_num_accepted_tokens: int = 0  # of those, drafts the target accepted (cumulative)
