"""Request-body limits, as a pure ASGI middleware: a size cap (413) and a read deadline (408).

Both act before any route reads the body. A Content-Length over the cap is refused unread; a
chunked body is counted as it arrives and reading stops at the cap. The deadline bounds how long
a client may take to send its whole body after its headers (slowloris: many half-sent bodies
holding connections and memory). Either refusal closes the connection, since the unread rest of
the body would otherwise be taken for the next request. A client that leaves mid-body gets one
log line, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.server.errors import error_body

logger = logging.getLogger("llmserve.server")


class BodyRefused(Exception):
    """Raised out of receive() into the route; BodyLimits answers it."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class _BodyReader:
    """The route's view of receive(): counted, and bounded in time until the body is complete."""

    receive: Receive
    max_bytes: int
    deadline: float  # time.monotonic()
    timeout: float
    received: int = 0
    complete: bool = False
    left_mid_body: bool = False

    async def __call__(self) -> Message:
        if self.complete:  # later receive() calls only wait for a disconnect: no deadline
            return await self.receive()
        try:
            message = await asyncio.wait_for(self.receive(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            raise BodyRefused(408, f"the request body did not arrive within {self.timeout:g}s",
                              "request_timeout") from None
        if message["type"] == "http.disconnect":
            self.left_mid_body = True
        elif message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                raise _too_large(self.max_bytes)
            self.complete = not message.get("more_body", False)
        return message


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (length := _content_length(scope)) > self.max_bytes:
            _log(scope, _too_large(self.max_bytes), f"Content-Length {length}")
            await _refuse(send, _too_large(self.max_bytes))
            return
        reader = _BodyReader(receive, self.max_bytes, time.monotonic() + self.read_timeout, self.read_timeout)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, reader, tracked_send)
        except BodyRefused as refusal:
            _log(scope, refusal, f"after {reader.received} bytes")
            if not started:
                await _refuse(send, refusal)
        except ClientDisconnect:
            if not reader.left_mid_body:
                raise
            logger.info("%s %s disconnected mid-body after %d bytes", scope["method"], scope["path"],
                        reader.received)


def _log(scope: Scope, refusal: BodyRefused, detail: str) -> None:
    logger.info("%s %s %d %s (%s)", scope["method"], scope["path"], refusal.status, refusal.code, detail)


def _too_large(max_bytes: int) -> BodyRefused:
    return BodyRefused(413, f"the request body is larger than this server's limit of {max_bytes} bytes",
                       "request_too_large")


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the HTTP parser has refused such a request already
                return 0
    return 0


async def _refuse(send: Send, refusal: BodyRefused) -> None:
    body = json.dumps(error_body(refusal.status, refusal.message, code=refusal.code)).encode()
    await send({"type": "http.response.start", "status": refusal.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
