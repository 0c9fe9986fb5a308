"""Run the app under uvicorn with a graceful drain: SIGTERM stops accepting, lets in-flight
requests finish for up to `shutdown_timeout` seconds, then cuts off the rest and exits 0.

The cut-off is ours, not uvicorn's: uvicorn's own timeout cancels request tasks mid-await, which
ends streams with no error event and logs a traceback for each. We abort the engine requests
instead, so each caller answers for itself (an SSE error event then [DONE], or a 503) with
code server_shutting_down; uvicorn's timeout stays as a backstop a little later.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from llmserve.server.app import EngineFactory, ServerConfig, ServerState, build_app

logger = logging.getLogger("llmserve.server")

CUT_OFF_GRACE_S = 5.0  # after the cut-off, for the aborted requests to send their errors and close


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after draining, which ends the process with status 143;
    a drained, orderly shutdown should exit 0, as orchestrators expect. Also cuts off what is
    still running when the drain time is up (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        cut_off = asyncio.create_task(self._cut_off_after(self.state.config.shutdown_timeout))
        try:
            await super().shutdown(sockets)
        finally:
            cut_off.cancel()

    async def _cut_off_after(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        serving = self.state.serving
        if serving is not None:
            logger.warning("shutdown timeout (%gs) reached: cutting off %d engine request(s)", timeout,
                           len(serving.in_flight))
            serving.cut_off()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def run_server(config: ServerConfig, log_level: str = "info", engine_factory: EngineFactory | None = None,
               extend_app: Callable[[FastAPI], None] | None = None) -> int:
    """`extend_app` adds to the app before it serves (the replica front's routing metrics)."""
    failed = threading.Event()
    server: GracefulServer | None = None

    def on_load_failure() -> None:
        failed.set()
        if server is not None:
            server.should_exit = True

    app = build_app(config, engine_factory, on_load_failure=on_load_failure)
    if extend_app is not None:
        extend_app(app)
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level.lower(),
                               access_log=False,  # each request gets our own line, with its token counts
                               timeout_graceful_shutdown=config.shutdown_timeout + CUT_OFF_GRACE_S, lifespan="on")
    server = GracefulServer(uv_config, app.state.server)
    logger.info("starting on http://%s:%d (model loading)", config.host, config.port)
    server.run()
    return 1 if failed.is_set() else 0
