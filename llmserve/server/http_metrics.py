"""Counts HTTP responses by route and status code, as a pure ASGI middleware placed outermost, so
refusals made before any route runs (413, 408, a full queue's 429) are counted too.

The route label is the route the app matched, else the request's path when the app serves it
(a refusal before routing), else `other`: random URLs cannot grow the label set without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HTTPMetrics:
    def __init__(self, app: ASGIApp, record: Callable[[str, str], None],
                 paths: Callable[[], Iterable[str]] = tuple) -> None:
        """`record(handler, status)` counts one response; `paths()` lists the paths the app serves
        (asked once, at the first request, when the app is complete)."""
        self.app = app
        self.record = record
        self.paths = paths
        self._known: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:  # not a cancellation: that answers nothing
            # The server answers 500 to what escapes the app before it started a response.
            self.record(self._handler(scope), str(status[0]) if status else "500")
            raise
        if status:  # else the client left before any response began: nothing was answered
            self.record(self._handler(scope), str(status[0]))

    def _handler(self, scope: Scope) -> str:
        route = getattr(scope.get("route"), "path", None)  # set by the router, on this same scope
        if route is not None:
            return route
        if self._known is None:
            self._known = frozenset(self.paths())
        return scope["path"] if scope["path"] in self._known else "other"
