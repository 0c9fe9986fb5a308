"""Run the app under uvicorn with a graceful drain: SIGTERM stops accepting, lets in-flight
requests finish for up to `shutdown_timeout` seconds, then exits 0."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from llmserve.server.app import ServerConfig, build_app

logger = logging.getLogger("llmserve.server")


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after draining, which ends the process with status 143;
    a drained, orderly shutdown should exit 0, as orchestrators expect."""

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


def run_server(config: ServerConfig, log_level: str = "info") -> int:
    failed = threading.Event()
    server: GracefulServer | None = None

    def on_load_failure() -> None:
        failed.set()
        if server is not None:
            server.should_exit = True

    app = build_app(config, on_load_failure=on_load_failure)
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level.lower(),
                               access_log=False,  # each request gets our own line, with its token counts
                               timeout_graceful_shutdown=config.shutdown_timeout, lifespan="on")
    server = GracefulServer(uv_config)
    logger.info("starting on http://%s:%d (model loading)", config.host, config.port)
    server.run()
    return 1 if failed.is_set() else 0
