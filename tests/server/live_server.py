"""A real uvicorn server on a free 127.0.0.1 port, run on a thread of the test process.

Real sockets matter: the in-process ASGI client buffers streams, which would hide exactly the
streaming, disconnect and back-pressure behaviour these tests are about.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import httpx
import uvicorn

from llmserve.engine.async_engine import AsyncEngine
from llmserve.server.app import ServerConfig, ServerState, build_app
from tests.timing import PATIENCE_S

MODEL_NAME = "tiny-chat"


@dataclass
class LiveServer:
    url: str
    state: ServerState

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def engine(self) -> AsyncEngine:
        return self.state.engine


@contextmanager
def live_server(engine: AsyncEngine | None, config: ServerConfig | None = None, factory=None,
                wait_ready: bool = True) -> Iterator[LiveServer]:
    config = config or ServerConfig(served_model_name=MODEL_NAME)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, a response's body written after its headers waits
    # for the client's delayed ACK: about 40 ms per request (a server started by the CLI is not affected).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = replace(config, port=port)
    app = build_app(config, engine_factory=factory or (lambda: engine), owns_engine=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", app.state.server)
    try:
        if wait_ready:
            wait_healthy(live.url)
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def wait_healthy(url: str, timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=timeout).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for the llmserve: series."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=PATIENCE_S).text.splitlines():
        if line.startswith("llmserve:"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values
