"""AsyncEngine: drives LLMEngine.step() on its own thread and streams outputs to asyncio callers.

The event loop never runs model work: callers validate and tokenize, hand a PreparedRequest to
the engine thread through a queue, and await their own asyncio.Queue of RequestOutputs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llmserve.config import EngineConfig
from llmserve.engine.engine import LLMEngine, PreparedRequest, Prompt
from llmserve.engine.native_memory import MallocTrimmer
from llmserve.engine.outputs import EngineStats, RequestOutput
from llmserve.engine.prefix_cache import PrefixCacheStats
from llmserve.pooling_params import PoolingParams
from llmserve.sampling_params import SamplingParams
from llmserve.service_classes import ServiceClasses

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def put(self, item: RequestOutput | BaseException) -> bool:
        """False when the caller's event loop has closed: nobody is listening any more."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            return False
        return True


class AsyncEngine:
    def __init__(self, engine: LLMEngine | Callable[[], LLMEngine]) -> None:
        """Takes an engine, or a function that builds one; a function runs on the engine thread,
        which is faster: OpenMP spins less once more threads than cores have run parallel regions,
        and building the model on another thread costs one more such thread (measured 12% here)."""
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._stopping = threading.Event()
        self._trimmer = MallocTrimmer()
        self._dead: BaseException | None = None
        built = threading.Event()
        failure: list[BaseException] = []

        def build_and_run() -> None:
            try:
                self.engine = engine() if callable(engine) else engine
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                built.set()
            self._run()

        self._thread = threading.Thread(target=build_and_run, name="llmserve-engine", daemon=True)
        self._thread.start()
        built.wait()
        if failure:
            raise failure[0]

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        return cls(lambda: LLMEngine(config))

    @classmethod
    def from_args(cls, model: str | None = None, **kwargs: Any) -> AsyncEngine:
        """Same keywords as LLM(...) (device="auto" takes the GPU when there is one):
        AsyncEngine.from_args() serves the embedded model."""
        config = EngineConfig.create(model, **kwargs)  # bad keywords fail here, on the caller's thread
        return cls(lambda: LLMEngine(config))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def service_classes(self) -> ServiceClasses:
        return self.engine.scheduler_config.service_classes

    @property
    def scheduling_policy(self) -> str:
        return self.engine.scheduler_config.policy

    @property
    def model_identity(self) -> str:
        return self.engine.model_identity

    @property
    def num_active_requests(self) -> int:
        return len(self._streams)

    @property
    def is_alive(self) -> bool:
        return self._dead is None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        """A snapshot for metrics; read from another thread, so counts may be one step old."""
        scheduler = self.engine.scheduler
        blocks = self.engine.block_manager
        cache = blocks.prefix_cache.stats if blocks.prefix_cache is not None else PrefixCacheStats()
        spec = self.engine.spec_stats
        return EngineStats(num_running=len(scheduler.running), num_waiting=len(scheduler.waiting),
                           kv_cache_usage=blocks.usage, prefix_cache_queries=cache.queries,
                           prefix_cache_hits=cache.hits, steps=self.engine.steps.snapshot(),
                           spec_decode_num_drafts=spec.num_drafts,
                           spec_decode_num_draft_tokens=spec.num_draft_tokens,
                           spec_decode_num_accepted_tokens=spec.num_accepted_tokens,
                           weight_bytes_per_step=self.engine.weight_bytes_per_step,
                           cache_config=self.engine.cache_config_info())

    def measure_copy_bandwidth(self) -> float:
        """The engine device's memory bandwidth in bytes per second, measured by a copy (a few
        tens of milliseconds); run it while the engine is idle, or it measures contention too."""
        from llmserve.devices import measure_copy_bandwidth

        return measure_copy_bandwidth(self.engine.device)

    def prepare(self, request_id: str, prompt: Prompt, params: SamplingParams | PoolingParams | None = None,
                priority: int | str | None = None) -> PreparedRequest:
        """Validate and tokenize on the caller's thread; raises ValueError on bad input. PoolingParams
        make an embedding request (see LLMEngine.prepare)."""
        return self.engine.prepare(request_id, prompt, params, priority)

    async def generate(self, request_id: str, prompt: Prompt, params: SamplingParams | PoolingParams | None = None,
                       priority: int | str | None = None) -> AsyncIterator[RequestOutput]:
        """Yields one RequestOutput per engine step that touched the request; the last has finished=True.

        Raises ValueError for bad input before anything is queued. Leaving the loop early aborts
        the request, and its KV blocks return to the pool at the next step.
        """
        prepared = self.prepare(request_id, prompt, params, priority)
        async for output in self.stream(prepared):
            yield output

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[RequestOutput]:
        """generate() for a request already validated with prepare()."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine loop has stopped: {self._dead}")
        request_id = prepared.request_id
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._commands.put(("add", prepared, stream))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True  # rejected by the engine: nothing of ours to abort
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                # Tied to this stream, so a late abort never hits a newer request with the same id.
                self._commands.put(("abort", request_id, stream))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None))

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._commands.put(("wake", None, None))
        self._thread.join(timeout)

    # --- engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        reason: BaseException = EngineDeadError("the engine was shut down")
        try:
            while not self._stopping.is_set():
                self._drain_commands(block=not self.engine.has_unfinished_requests())
                if self.engine.has_unfinished_requests():
                    self._deliver(self.engine.step())
                self._trimmer.maybe_trim()
        except BaseException as exc:  # pragma: no cover - a bug in the engine; fail every caller loudly
            logger.exception("engine loop died")
            reason = exc
        self._dead = reason
        for stream in self._streams.values():
            stream.put(EngineDeadError(f"the engine loop has stopped: {reason}"))
        self._streams.clear()
        self._fail_queued(reason)

    def _fail_queued(self, reason: BaseException) -> None:
        """Requests that arrived after the loop ended must not wait for ever."""
        while True:
            try:
                kind, _, stream = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add" and stream is not None:
                stream.put(EngineDeadError(f"the engine loop has stopped: {reason}"))

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, payload: PreparedRequest | str | None, stream: _Stream | None) -> None:
        if kind == "add":
            try:
                self.engine.add_prepared(payload)
            except Exception as exc:
                stream.put(exc)
                return
            self._streams[payload.request_id] = stream
        elif kind == "abort":
            current = self._streams.get(payload)
            if stream is not None and current is not stream:
                return  # that request already finished; the id may belong to a newer one now
            output = self.engine.abort_request(payload)
            self._streams.pop(payload, None)
            if current is not None and output is not None:
                current.put(output)  # a caller still waiting sees finish_reason "abort"

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        # One wake-up per event loop per step, not one per request: every wake-up makes the loop
        # thread compete with this one for the GIL while the step's CPU threads wait.
        batches: dict[asyncio.AbstractEventLoop, list[tuple[str, _Stream, RequestOutput]]] = {}
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                batches.setdefault(stream.loop, []).append((output.request_id, stream, output))
                if output.finished:
                    del self._streams[output.request_id]
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, [(stream.queue, output) for _, stream, output in batch])
            except RuntimeError:  # that caller's event loop is gone: nobody is listening any more
                for request_id, _, output in batch:
                    self._streams.pop(request_id, None)
                    if not output.finished:
                        self.engine.abort_request(request_id)


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for queue_, output in items:
        queue_.put_nowait(output)
