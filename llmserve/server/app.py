"""build_app(): the FastAPI application, its state, and its lifespan (load, warm up, drain).

The socket is bound before the model loads: /health answers 503 while the engine is built on a
worker thread (torch is imported there too), then 200 once a warm-up has run through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from llmserve.server.cached_responses import ResponseCacheFront
from llmserve.server.chat_tools import ChatSetup
from llmserve.server.dashboard import dashboard_router
from llmserve.server.errors import install_handlers
from llmserve.server.http_metrics import HTTPMetrics
from llmserve.server.limits import BodyLimits
from llmserve.server.metrics import ServerMetrics
from llmserve.server.response_cache import ResponseCache, ResponseCacheStats, open_response_cache
from llmserve.server.routes import document_request_bodies, router
from llmserve.server.serving import Serving
from llmserve.server.shedding import LoadShedder

if TYPE_CHECKING:
    from llmserve.engine.async_engine import AsyncEngine
    from llmserve.engine.outputs import EngineStats

logger = logging.getLogger("llmserve.server")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queued_requests: int | None = None
    served_model_name: str = "llmserve"
    shutdown_timeout: float = 30.0
    warmup: bool = True
    response_cache: str | None = None  # a size (in memory) or a redis:// URL; None: off
    response_cache_ttl: float = 3600.0  # seconds
    response_cache_shared: bool = False  # share entries across API keys
    max_request_body: int = 4 << 20  # bytes; larger bodies get 413 before they are read
    request_read_timeout: float = 30.0  # seconds from a request's headers to the end of its body, else 408
    engine_args: dict[str, Any] = field(default_factory=dict)  # keywords of AsyncEngine.from_args
    chat: ChatSetup = field(default_factory=ChatSetup)  # --chat-template, --tool-call-parser
    memory_bandwidth: float | None = None  # bytes/s for model_bandwidth_utilization; None: measured at start


@dataclass
class ServerState:
    config: ServerConfig
    started: float = field(default_factory=time.monotonic)  # for durations
    created: int = field(default_factory=lambda: int(time.time()))  # Unix time, as /v1/models reports it
    serving: Serving | None = None
    engine: AsyncEngine | None = None
    ready: bool = False
    load_error: str | None = None
    shedder: LoadShedder | None = None  # built with the engine, which knows the service classes
    response_cache: ResponseCache | None = None
    memory_bandwidth: float | None = None  # bytes/s: the flag's, or measured once the engine is built
    metrics: ServerMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.memory_bandwidth = self.config.memory_bandwidth
        self.metrics = ServerMetrics(self.config.served_model_name, self.engine_stats, self.queue_stats,
                                     self.response_cache_stats, lambda: self.memory_bandwidth, lambda: self.healthy)

    @property
    def healthy(self) -> bool:
        """What /health answers 200 to: loaded, warmed up, and the engine loop alive."""
        return self.ready and self.engine is not None and self.engine.is_alive

    def response_cache_stats(self) -> ResponseCacheStats | None:
        return self.response_cache.stats if self.response_cache is not None else None

    def engine_stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine is not None else None

    def queue_stats(self) -> list[tuple[str, int, float]]:
        return self.shedder.snapshot() if self.shedder is not None else []


EngineFactory = Callable[[], "AsyncEngine"]


def default_engine_factory(config: ServerConfig) -> EngineFactory:
    def build() -> AsyncEngine:
        from llmserve.engine.async_engine import AsyncEngine  # torch loads here, off the event loop

        return AsyncEngine.from_args(**config.engine_args)

    return build


def build_app(config: ServerConfig, engine_factory: EngineFactory | None = None,
              on_load_failure: Callable[[], None] | None = None, owns_engine: bool = True) -> FastAPI:
    """`owns_engine=False` leaves the engine running at shutdown (tests that share one engine)."""
    factory = engine_factory or default_engine_factory(config)
    state = ServerState(config)

    if config.response_cache:
        # Built now, so a bad --response-cache fails at start, not after the model has loaded.
        state.response_cache = open_response_cache(config.response_cache, config.response_cache_ttl)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(state, factory, on_load_failure))
        try:
            yield
        finally:
            loader.cancel()
            if state.serving is not None:
                state.serving.close()
            if state.response_cache is not None:
                await state.response_cache.close()
            if state.engine is not None and owns_engine:
                await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="llmserve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_handlers(app)
    app.add_middleware(BodyLimits, max_bytes=config.max_request_body, read_timeout=config.request_read_timeout)
    app.include_router(router)
    app.include_router(dashboard_router)
    document_request_bodies(app)
    # Outermost, so it counts the refusals BodyLimits makes before any route runs.
    app.add_middleware(HTTPMetrics, record=state.metrics.record_http, paths=lambda: app.openapi()["paths"])
    return app


async def _load(state: ServerState, factory: EngineFactory, on_failure: Callable[[], None] | None) -> None:
    try:
        engine = await asyncio.to_thread(factory)
        state.engine = engine
        state.shedder = LoadShedder(engine.service_classes, state.config.max_queued_requests,
                                    class_aware=engine.scheduling_policy == "classes")
        state.serving = Serving(engine, state.config.served_model_name, state.metrics, state.shedder,
                                _response_front(state, engine), state.config.chat)
        if state.config.warmup:
            await warm_up(engine, state.config.chat.chat_template)
        if state.memory_bandwidth is None:  # while the engine is idle, so nothing else competes
            state.memory_bandwidth = await asyncio.to_thread(engine.measure_copy_bandwidth)
            logger.info("memory bandwidth (a measured copy): %.1f GB/s", state.memory_bandwidth / 1e9)
    except Exception as exc:
        logger.exception("the model failed to load")
        state.load_error = str(exc)
        if on_failure is not None:
            on_failure()
        return
    state.ready = True
    logger.info("ready in %.2fs: serving %s at http://%s:%d/v1", time.monotonic() - state.started,
                state.config.served_model_name, state.config.host, state.config.port)
    # A server's KV pool fills over hours of traffic anyway: claim it now, off the event loop and
    # after /health turns 200, so RSS is flat from the start and an overcommitted host fails early.
    try:
        await asyncio.to_thread(engine.engine.make_kv_cache_resident)
    except Exception:  # the pool then faults in as it is used, as it always did
        logger.warning("could not make the KV cache pool resident", exc_info=True)


def _response_front(state: ServerState, engine: AsyncEngine) -> ResponseCacheFront | None:
    if state.response_cache is None:
        return None
    config = state.config
    logger.info("response cache: %s", state.response_cache.description)
    return ResponseCacheFront(state.response_cache, f"{config.served_model_name}|{engine.model_identity}",
                              config.response_cache_shared)


async def warm_up(engine: AsyncEngine, template: str | None = None) -> None:
    """Run a small mixed batch end to end, so the first real request pays no first-use costs.

    It touches the attention kernel, the allocator, the sampler's paths and the chat template.
    """
    from llmserve.sampling_params import SamplingParams

    if engine.tokenizer is not None and (template or engine.tokenizer.chat_template):
        engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template)
    vocab = engine.engine.model_config.vocab_size
    # Three tokens each: a prefill and two decode steps, enough to touch every path once.
    plans = [(48, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)),
             (12, SamplingParams(temperature=0.8, top_p=0.9, top_k=40, max_tokens=3, ignore_eos=True, seed=0,
                                 logprobs=2, repetition_penalty=1.1))]

    async def run(index: int, length: int, params: SamplingParams) -> None:
        prompt = [(7 * index + 3 * i + 11) % vocab for i in range(length)]
        prepared = engine.prepare(f"warmup-{index}", {"prompt_token_ids": prompt}, params)
        async for _ in engine.stream(prepared):
            pass

    await asyncio.gather(*(run(i, length, params) for i, (length, params) in enumerate(plans)))
