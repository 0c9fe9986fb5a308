"""Engine streams as the server sees them: the queue per class, per-request metrics, and merging.

One HTTP request may fan out to several engine requests (a list of prompts); `merge` interleaves
their outputs and, when the consumer stops early (a client disconnect), aborts every one of them.
A whole (non-streaming) reply has no stream for a disconnect to close: `unless_disconnected`
watches the connection while it is computed, and stops the work when the client hangs up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmserve.server.metrics import RequestRecord, ServerMetrics

if TYPE_CHECKING:
    from starlette.types import Receive

    from llmserve.engine.async_engine import AsyncEngine
    from llmserve.engine.engine import PreparedRequest
    from llmserve.engine.outputs import RequestOutput
    from llmserve.server.shedding import Ticket
    from llmserve.service_classes import ServiceClass


@dataclass(eq=False)
class QueuedPrompt:
    """A tokenized prompt holding its place in the server's queue until its first token."""

    prepared: PreparedRequest
    ticket: Ticket


@dataclass
class _Progress:
    received: float
    first_token: float | None = None
    last_token: float | None = None
    last: RequestOutput | None = None

    def saw(self, output: RequestOutput, now: float, gaps: list[float]) -> None:
        self.last = output
        # A request that generates nothing (pooling, max_tokens 0) is served once its prompt is computed.
        prompt_only = output.finished and not output.error and self.first_token is None and all(
            o.finish_reason == "length" and not o.token_ids for o in output.outputs)
        if not (prompt_only or any(o.delta_token_ids for o in output.outputs)):
            return
        if self.first_token is None:
            self.first_token = now
        else:
            gaps.append(now - self.last_token)
        self.last_token = now


async def tracked_stream(engine: AsyncEngine, queued: QueuedPrompt, metrics: ServerMetrics, received: float,
                         in_flight: set[str]) -> AsyncIterator[RequestOutput]:
    """engine.stream() plus the bookkeeping: leaves the queue at its first token, records metrics at the end,
    and is in `in_flight` (by engine request id) meanwhile, for a shutdown to find."""
    progress = _Progress(received)
    gaps: list[float] = []
    in_flight.add(queued.prepared.request_id)
    try:
        async for output in engine.stream(queued.prepared):
            progress.saw(output, time.monotonic(), gaps)
            if progress.first_token is not None and not queued.ticket.done:
                queued.ticket.leave(served=True)
            yield output
    finally:
        in_flight.discard(queued.prepared.request_id)
        queued.ticket.leave(served=False)
        metrics.record(_record(queued.prepared, progress, gaps, queued.ticket.service_class))


def _record(prepared: PreparedRequest, progress: _Progress, gaps: list[float],
            service_class: ServiceClass) -> RequestRecord:
    last = progress.last
    reason = "abort"  # the stream ended before the engine finished it: a disconnect
    generated = 0
    queue_time = None
    if last is not None:
        generated = last.num_generated_tokens
        if last.finished:
            reason = "error" if last.error else _overall_reason(last)
        m = last.metrics
        if m is not None and m.first_scheduled_time is not None:
            queue_time = max(0.0, m.first_scheduled_time - m.arrival_time)
    ttft = None if progress.first_token is None else progress.first_token - progress.received
    return RequestRecord(prompt_tokens=len(prepared.prompt_token_ids), generation_tokens=generated,
                         finish_reason=reason, e2e_latency=time.monotonic() - progress.received, ttft=ttft,
                         queue_time=queue_time, inter_token_latencies=gaps, service_class=service_class)


def _overall_reason(output: RequestOutput) -> str:
    reasons = {o.finish_reason for o in output.outputs}
    return next((r for r in ("error", "abort", "stop", "length") if r in reasons), "abort")


_DONE = object()


async def merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Yields (stream index, output) as outputs arrive; closing this early cancels every stream."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_DONE)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def unless_disconnected(work: Coroutine[Any, Any, None], receive: Receive | None) -> bool:
    """Runs `work` to its end and returns True, unless the client hangs up first: then `work` is
    cancelled, which closes its engine streams and so aborts their requests at the next step, and
    this returns False. `receive` must be past the request body: all it has left is the disconnect."""
    if receive is None:
        await work
        return True
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))  # its streams' aborts are queued before the caller logs
    if task.cancelled():
        return False
    task.result()  # its exception, if it failed
    return True


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
