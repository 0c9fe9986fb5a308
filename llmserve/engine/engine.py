"""LLMEngine: turns prompts into Requests and runs schedule -> execute -> update. No I/O, no threads."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace

import torch

from llmserve.backends.base import KVCacheSpec
from llmserve.backends.select import select_backend
from llmserve.config import EngineConfig, SchedulerConfig
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.detokenizer import IncrementalDetokenizer
from llmserve.engine.native_memory import cap_onednn_primitive_cache
from llmserve.engine.output_builder import OutputBuilder
from llmserve.engine.outputs import RequestOutput
from llmserve.engine.prefix_cache import PrefixCache, root_hash
from llmserve.engine.preparer import PreparedRequest, Prompt, RequestPreparer
from llmserve.engine.prompt_results import record_prompt_results
from llmserve.engine.request import Request, RequestStatus
from llmserve.engine.scheduler import Scheduler
from llmserve.engine.scheduler_output import scheduler_output
from llmserve.engine.step_stats import StepRecorder, weight_bytes_per_step
from llmserve.engine.threads import ThreadGovernor
from llmserve.model.loader import load_model, resolve_dtype
from llmserve.pooling_params import PoolingParams
from llmserve.runner.model_runner import ModelRunner
from llmserve.runner.step_result import SampledToken
from llmserve.sampling_params import SamplingParams
from llmserve.spec_decode.acceptance import SpecDecodeStats, record_verification
from llmserve.spec_decode.proposer import NgramProposer
from llmserve.structured.compiler import GrammarCompiler
from llmserve.structured.guide import Guide

logger = logging.getLogger(__name__)

class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        start = time.perf_counter()
        cap_onednn_primitive_cache()
        self.threads = ThreadGovernor(config.num_threads)
        self.config = config
        self.dtype = resolve_dtype(config.dtype, config.device)
        self.device = torch.device(config.device)
        self.backend = select_backend(self.device, config.backend, config.enforce_eager)
        max_len = config.max_model_len or config.scheduler.max_model_len
        loaded = load_model(config.model, self.dtype, max_len, config.load_format, config.device, config.seed,
                            config.quant, self.backend)
        self.quant = loaded.quant  # what the weights really are: a saved checkpoint may bring its own
        self.quant_specs = loaded.quant_specs
        self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.model_path = loaded.path
        self.max_model_len = self._resolve_max_len(config.max_model_len)
        sched = replace(config.scheduler, max_model_len=self.max_model_len)
        cfg = self.model_config
        kv_spec = KVCacheSpec(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, config.cache.block_size, self.dtype)
        num_blocks = self._num_blocks(kv_spec, loaded.model, sched)
        prefix_cache = None
        if config.cache.enable_prefix_caching:
            prefix_cache = PrefixCache(root_hash(self.model_identity))
        self.block_manager = BlockManager(num_blocks, config.cache.block_size, prefix_cache)
        self.scheduler = Scheduler(sched, self.block_manager)
        self.runner = ModelRunner(loaded.model, self.backend, kv_spec, num_blocks, config.seed)
        self.weight_bytes_per_step = weight_bytes_per_step(loaded.model.state_dict().items(),
                                                           cfg.tie_word_embeddings)
        self.steps = StepRecorder()
        self.graph_capture_seconds = self.runner.capture_graphs(sched.max_num_seqs, self.max_model_len)
        self.outputs = OutputBuilder()
        self.grammars = None if self.tokenizer is None else GrammarCompiler(
            self.tokenizer, self.model_config.vocab_size, self.model_config.eos_token_ids)
        self._requests: dict[str, list[Request]] = {}
        self._sequence = itertools.count()
        self.proposer = NgramProposer(config.speculative) if config.speculative is not None else None
        self.spec_stats = SpecDecodeStats()
        graphs = f", CUDA graphs captured in {self.graph_capture_seconds:.1f}s" if self.graph_capture_seconds else ""
        logger.info("engine ready in %.2fs on %s (%s backend%s): %s, %s, %s weights, %d KV blocks of %d tokens",
                    time.perf_counter() - start, self.device, self.backend.name, graphs,
                    self.model_config.architecture, str(self.dtype).removeprefix("torch."),
                    self.quant.describe() if self.quant.enabled else "unquantized", num_blocks, config.cache.block_size)

    # --- configuration -----------------------------------------------------------------
    def _resolve_max_len(self, requested: int | None) -> int:
        limit = self.model_config.max_position_embeddings
        if self.model_config.sliding_window:
            # We attend over the full context; past the window that would differ from the model's training.
            limit = min(limit, self.model_config.sliding_window)
        if requested is None:
            return min(limit, self.config.scheduler.max_model_len)
        if requested < 1:
            raise ValueError(f"max_model_len must be a positive integer, got {requested}")
        if requested > limit:
            raise ValueError(f"max_model_len {requested} exceeds the model's limit of {limit}")
        return requested

    def _num_blocks(self, kv_spec: KVCacheSpec, model: torch.nn.Module, sched: SchedulerConfig) -> int:
        cache = self.config.cache
        if cache.num_blocks is not None:
            return cache.num_blocks
        budget = cache.kv_cache_memory
        if budget is None:  # size the pool from what the device has left after the largest step
            budget = self.backend.kv_cache_budget(model, kv_spec, sched, cache.gpu_memory_utilization)
        num_blocks = budget // kv_spec.bytes_per_block
        needed = -(-self.max_model_len // cache.block_size)
        if num_blocks < needed:
            raise ValueError(f"a KV pool of {budget} bytes holds {num_blocks * cache.block_size} tokens, less than "
                             f"max_model_len {self.max_model_len}; give it more memory or lower max_model_len")
        return num_blocks

    def make_kv_cache_resident(self) -> None:
        """Claim the KV pool's memory now instead of as blocks are first used: a server's RSS is then
        what it will be after hours of traffic, and an overcommitted machine fails at start. Safe on
        any thread while the engine runs (no byte of the pool is written)."""
        start = time.perf_counter()
        if resident := self.runner.make_kv_cache_resident():
            logger.info("KV cache pool resident (%.2f GiB) in %.2fs", resident / (1 << 30), time.perf_counter() - start)

    @property
    def model_identity(self) -> str:
        """What besides the tokens shapes this engine's KV and answers: weights, dtype, quantization, dummy seed."""
        config = self.config
        return "|".join((str(self.model_path), config.load_format, str(self.dtype), str(config.seed),
                         self.quant.describe()))

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return self.scheduler.config

    def cache_config_info(self) -> dict[str, str]:
        """The KV cache's settings as vLLM's cache_config_info labels them (inference gateways read
        block_size and num_gpu_blocks; the pool's blocks are counted there on a CPU too)."""
        cache = self.config.cache
        return {"block_size": str(cache.block_size), "num_gpu_blocks": str(self.block_manager.num_blocks),
                "cache_dtype": str(self.dtype).removeprefix("torch."),
                "enable_prefix_caching": str(cache.enable_prefix_caching),
                "gpu_memory_utilization": str(cache.gpu_memory_utilization), "device": str(self.device)}

    # --- requests in ---------------------------------------------------------------------
    def prepare(self, request_id: str, prompt: Prompt, params: SamplingParams | PoolingParams | None = None,
                priority: int | str | None = None) -> PreparedRequest:
        """Validate and tokenize; raises ValueError on bad input. Safe to call from any thread.

        `priority` names a service class, by rank (0 = most important) or name; None is the default class.
        PoolingParams make an embedding request: it generates nothing, and its final output has `embedding`.
        """
        return self.preparer.prepare(request_id, prompt, params, priority)

    @property
    def preparer(self) -> RequestPreparer:
        return RequestPreparer(self.tokenizer, self.scheduler_config.service_classes, self.max_model_len,
                               self.model_config.vocab_size, self._pool_tokens, self.grammars)

    @property
    def _pool_tokens(self) -> int:
        return self.block_manager.num_blocks * self.block_manager.block_size

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | PoolingParams | None = None,
                    priority: int | str | None = None) -> None:
        self.add_prepared(self.prepare(request_id, prompt, params, priority))

    def add_prepared(self, prepared: PreparedRequest) -> None:
        if prepared.request_id in self._requests:
            raise ValueError(f"request id {prepared.request_id!r} is already running")
        params = prepared.params
        # Capped by the pool too: a request alone must always be able to finish, or it would
        # preempt itself for ever.
        room = min(self.max_model_len, self._pool_tokens) - len(prepared.prompt_token_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        children = [self._make_sequence(prepared, i, max_tokens) for i in range(params.n)]
        # The prompt is the same for all n: its first sequence alone gathers the prompt's results.
        children[0].prompt_results = prepared.prompt_results()
        self._requests[prepared.request_id] = children
        self.outputs.register(prepared, children)
        for child in children:
            self.scheduler.add_request(child)

    def _make_sequence(self, prepared: PreparedRequest, index: int, max_tokens: int) -> Request:
        params = prepared.params
        generator = None
        if params.seed is not None:
            # Each of the n sequences gets its own stream, or all n would be identical.
            generator = torch.Generator(device="cpu").manual_seed(choice_seed(params.seed, index))
        detok = None
        if self.tokenizer is not None:
            detok = IncrementalDetokenizer(self.tokenizer, prepared.prompt_token_ids, params)
        eos = () if params.ignore_eos else self.model_config.eos_token_ids
        return Request(
            request_id=f"{prepared.request_id}#{index}", parent_id=prepared.request_id, index=index,
            prompt_token_ids=prepared.prompt_token_ids, params=params, max_tokens=max_tokens,
            eos_token_ids=eos, generator=generator, detokenizer=detok, priority=prepared.priority,
            sequence_number=next(self._sequence), guide=Guide(prepared.grammar) if prepared.grammar else None,
        )

    def abort_request(self, request_id: str) -> RequestOutput | None:
        children = self._requests.get(request_id)
        if children is None:
            return None
        for child in children:
            if not child.is_finished:
                self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)
        return self._collect(request_id)

    # --- the step ------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def step(self) -> list[RequestOutput]:
        if self.proposer is not None:
            self.proposer.propose(self.scheduler.running)
        plan = self.scheduler.schedule()
        self.steps.record(plan.num_batched_tokens, len(plan.scheduled), len(plan.preempted))
        if plan.is_empty:
            return []
        self.threads.adjust()
        try:
            message = scheduler_output(plan.scheduled)
            result = self.runner.execute(message)
            record_prompt_results(plan.scheduled, [r.num_computed_tokens for r, _ in plan.scheduled], result)
        except Exception as exc:  # one bad batch must not take the engine down
            logger.exception("engine step failed")
            return self._fail(plan.scheduled, f"internal error: {exc}")
        for (request, num_new), seq in zip(plan.scheduled, message.sequences, strict=True):
            # Drafts count as computed only once accepted, below: a rejected draft's slot is overwritten later.
            request.num_computed_tokens += num_new - len(seq.draft_token_ids)
            self.block_manager.cache_full_blocks(request)
            if request.max_tokens == 0 and request.num_pending_tokens == 0:
                self.scheduler.finish(request, RequestStatus.FINISHED_LENGTH)  # prefilled: all it asked for
        touched = {r.parent_id for r, _ in plan.scheduled}
        failed: list[RequestOutput] = []
        for token in result.sampled:
            request = plan.scheduled[token.seq_index][0]
            if request.is_finished:  # a sibling failed earlier in this loop and ended it
                continue
            try:
                self._append(request, token)
            except Exception as exc:  # e.g. a detokenizer failure: fail this request alone
                logger.exception("request %s failed", request.request_id)
                failed += self._fail([(request, 0)], f"internal error: {exc}")
            if token.is_draft and not request.is_finished:
                request.num_computed_tokens += 1  # an accepted draft: its KV was written this step
        if self.proposer is not None:
            record_verification(plan.scheduled, message, result, self.spec_stats, self.block_manager)
        # A failed parent was collected (and forgotten) by _fail; the others are collected now.
        return failed + [out for pid in touched if pid in self._requests and (out := self._collect(pid)) is not None]

    def _append(self, request: Request, token: SampledToken) -> None:
        token_id = token.token_id
        now = time.monotonic()
        if request.times.first_token is None:
            request.times.first_token = now
        request.output_token_ids.append(token_id)
        if token.logprobs is not None:
            request.logprobs.append(token.logprobs)
        if request.guide is not None and not request.guide.accept(token_id):
            raise RuntimeError(f"token {token_id} was sampled against the request's grammar")
        status = self._stop_status(request, token_id)
        if status is not None:
            self.scheduler.finish(request, status)

    def _stop_status(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.params
        if token_id in request.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if params.stop_token_ids and token_id in params.stop_token_ids:
            request.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
        if request.detokenizer is not None:
            stop = request.detokenizer.update([token_id])
            if stop is not None:
                request.stop_reason = stop
                return RequestStatus.FINISHED_STOPPED
        if request.guide is not None and request.guide.is_terminated:
            return RequestStatus.FINISHED_STOPPED  # the grammar took its stop token (even with ignore_eos)
        if len(request.output_token_ids) >= request.max_tokens or request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _fail(self, scheduled: list[tuple[Request, int]], message: str) -> list[RequestOutput]:
        parents = set()
        for request, _ in scheduled:
            request.error = message
            self.scheduler.finish(request, RequestStatus.FINISHED_ERROR)
            parents.add(request.parent_id)
        return [out for pid in parents if (out := self._collect(pid)) is not None]

    def _collect(self, parent_id: str) -> RequestOutput | None:
        children = self._requests[parent_id]
        output = self.outputs.build(parent_id, children)
        if output.finished:
            # Siblings of a failed sequence cannot be returned whole: end them too.
            for child in children:
                if not child.is_finished:
                    self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)
            del self._requests[parent_id]
            self.outputs.forget(parent_id)
        return output


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request seeded with `seed`.

    torch takes seeds in [0, 2**64) (and negative ones as two's complement), so the sum wraps rather
    than overflowing at the top of the range: a seed of 2**63 - 1 with n=2 is as valid as seed 0. For
    every sum torch accepted already this is the seed it used, so seeded outputs do not change.
    """
    return (seed + index) % 2**64
