"""Bounded load for the observability tests: every class, streamed and not, shared prefixes (prefix
cache), a repeated greedy request (response cache); and an overload of p0 that fills the queue."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from tests.server.live_server import MODEL_NAME
from tests.timing import PATIENCE_S

PREFIX = [(11 * i + 5) % 300 + 3 for i in range(40)]  # two full 16-token blocks shared by every prompt


def _body(cls: str, prompt: list[int], max_tokens: int, stream: bool) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "priority": cls, "stream": stream}


async def _send(client: httpx.AsyncClient, url: str, body: dict) -> int:
    if not body["stream"]:
        return (await client.post(url, json=body)).status_code
    async with client.stream("POST", url, json=body) as resp:
        async for _ in resp.aiter_lines():
            pass
        return resp.status_code


def normal_load(base_url: str, requests_per_worker: int = 6, workers: int = 3) -> list[int]:
    """Statuses of every request sent; a few seconds of work for a tiny model."""
    url = base_url + "/v1/completions"

    async def worker(index: int, client: httpx.AsyncClient) -> list[int]:
        statuses = []
        for j in range(requests_per_worker):
            cls = ("p0", "p1", "p2", "p3")[(index + j) % 4]
            prompt = PREFIX + [index + 3, j + 3, 7]
            statuses.append(await _send(client, url, _body(cls, prompt, 8, stream=j % 2 == 0)))
        return statuses

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=PATIENCE_S) as client:
            repeated = _body("p3", [9, 8, 7, 6], 4, stream=False)
            statuses = [await _send(client, url, repeated), await _send(client, url, repeated)]
            for batch in await asyncio.gather(*(worker(i, client) for i in range(workers))):
                statuses += batch
            return statuses

    return asyncio.run(run())


class Overload:
    """p0 requests from more concurrent clients than the queue admits, on a thread, until stopped."""

    def __init__(self, base_url: str, clients: int = 24, limit_s: float = PATIENCE_S) -> None:
        self.url = base_url + "/v1/completions"
        self.clients = clients
        self.limit_s = limit_s
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Overload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PATIENCE_S)

    async def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        prompt = PREFIX + list(range(3, 67))

        async def client_loop(client: httpx.AsyncClient) -> None:
            while not self._stop.is_set() and time.monotonic() < deadline:
                # Past the response cache, which would answer these identical requests without the engine.
                status = await _send(client, self.url, {**_body("p0", prompt, 32, stream=False), "cache": False})
                self.statuses.append(status)
                if status == 429:
                    await asyncio.sleep(0.1)  # refusals are instant: do not spin

        async with httpx.AsyncClient(timeout=PATIENCE_S,
                                     limits=httpx.Limits(max_connections=self.clients)) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(self.clients)))
