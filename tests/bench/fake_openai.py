"""A fake OpenAI-compatible server that streams with scripted delays, for checking the bench by hand.

`Script` says how one request is answered; a `ScriptFn` picks the script from the request's body
and its arrival number. The server runs on a free local port, in this event loop
(`fake_server`) or on a thread of its own (`threaded_fake_server`, for code that runs its own loop).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODIES = web.AppKey("bodies", list[dict[str, Any]])  # what each request posted, for payload checks
MODEL_ID = "fake-model"


@dataclass(frozen=True)
class Script:
    first_delay_s: float = 0.05  # before the first text chunk
    gap_s: float = 0.02  # between text chunks
    texts: tuple[str, ...] = ("a", "b", "c", "d", "e")
    usage_tokens: int | None = None  # completion_tokens in the final usage chunk; None sends no usage
    status: int = 200  # anything else answers at once with an OpenAI-shaped error
    drop_after: int | None = None  # close the connection after this many text chunks
    usage: Any = None  # sent as the usage chunk's "usage" as-is, instead of the counts above
    done_delay_s: float = 0.0  # pause between the last chunk and 'data: [DONE]'
    field: str = "content"  # the chat delta's key for text


ScriptFn = Callable[[dict[str, Any], int], Script]  # (body, arrival number from 0) -> script


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def scripted(script_for: ScriptFn) -> Handler:
    arrivals = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal arrivals
        body = await request.json()
        request.app[BODIES].append(body)
        script = script_for(body, arrivals)
        arrivals += 1
        if script.status != 200:
            return web.json_response({"error": {"message": f"scripted {script.status}", "type": "test"}},
                                     status=script.status)
        return await _stream(request, script, chat=request.path.endswith("/chat/completions"))

    return handle


async def _stream(request: web.Request, script: Script, chat: bool) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(script.first_delay_s)
    for i, text in enumerate(script.texts):
        if i:
            await asyncio.sleep(script.gap_s)
        if script.drop_after is not None and i == script.drop_after:
            assert request.transport is not None
            request.transport.close()  # mid-stream: no [DONE], no clean chunked ending
            return response
        choice = {"index": 0, "delta": {script.field: text}} if chat else {"index": 0, "text": text}
        await response.write(sse({"choices": [choice]}))
    if script.usage is not None:
        await response.write(sse({"choices": [], "usage": script.usage}))
    elif script.usage_tokens is not None:
        await response.write(sse({"choices": [], "usage": {"prompt_tokens": 3,
                                                           "completion_tokens": script.usage_tokens}}))
    await asyncio.sleep(script.done_delay_s)
    await response.write(b"data: [DONE]\n\n")
    return response


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """(base URL, posted bodies) of a server answering both endpoints with `handler`."""
    app = web.Application()
    app[BODIES] = []
    app.router.add_post("/v1/completions", handler)
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_get("/v1/models", _models)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app[BODIES]
    finally:
        await runner.cleanup()


@contextmanager
def threaded_fake_server(handler: Handler) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The same server on a thread with its own event loop, for callers that call asyncio.run themselves."""
    loop = asyncio.new_event_loop()
    started: asyncio.Future[tuple[str, list[dict[str, Any]]]] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with fake_server(handler) as running:
            started.set_result(running)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_wait(started), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        if not thread.is_alive():  # closing a loop that still runs would hide the real failure
            loop.close()


async def _wait(future: asyncio.Future[Any]) -> Any:
    return await future
