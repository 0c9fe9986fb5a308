"""Where cached responses live: an in-memory LRU bounded in bytes, or Redis so replicas share one.

Entries are opaque bytes under a key (see cached_responses.py for what goes in them), each with a
time to live. The cache never fails a request: a Redis that is down or slow reads as a miss and
a write that fails is dropped, with one warning per outage, and Redis is left alone for a few
seconds after an error so a dead server costs requests nothing.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from llmserve.config import parse_size

logger = logging.getLogger("llmserve.server")

REDIS_KEY_PREFIX = "llmserve:response:"
REDIS_TIMEOUT_S = 0.25  # a cache lookup must never cost a request more than this
REDIS_RETRY_AFTER_S = 5.0  # after an error, skip Redis this long before trying again


@dataclass
class ResponseCacheStats:
    lookups: int = 0
    hits: int = 0
    stored_bytes: int = 0  # memory: bytes held now; Redis: bytes this server has written
    evictions: int = 0  # entries dropped to make room (memory; Redis evicts by its own policy)
    errors: int = 0  # failed Redis calls, each answered as a miss or a dropped write


class ResponseCache(Protocol):
    stats: ResponseCacheStats
    description: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...

    async def close(self) -> None: ...


class MemoryResponseCache:
    def __init__(self, capacity_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity_bytes < 1 or ttl_s <= 0:
            raise ValueError("a response cache needs a positive size and TTL")
        self.capacity_bytes = capacity_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.stats = ResponseCacheStats()
        self.description = f"in memory, {capacity_bytes} bytes, TTL {ttl_s:g} s"
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expiry)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        self.stats.lookups += 1
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expiry = entry
        if self.clock() >= expiry:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return value

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.capacity_bytes:
            return  # it would evict everything and still not fit
        if key in self._entries:
            self._drop(key)
        while self.stats.stored_bytes + len(value) > self.capacity_bytes:
            self._drop(next(iter(self._entries)))
            self.stats.evictions += 1
        self._entries[key] = (value, self.clock() + self.ttl_s)
        self.stats.stored_bytes += len(value)

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.stats.stored_bytes -= len(value)

    async def close(self) -> None:
        self._entries.clear()
        self.stats.stored_bytes = 0


class RedisResponseCache:
    def __init__(self, url: str, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 timeout_s: float | None = None) -> None:
        """`timeout_s` bounds each Redis call (default REDIS_TIMEOUT_S, read now, so tests on a busy
        machine can raise it: a call that takes longer is a miss)."""
        try:
            from redis import asyncio as redis_asyncio
        except ImportError:
            raise ValueError("a Redis response cache needs the redis package: pip install 'llmserve[redis]'") from None
        if ttl_s <= 0:
            raise ValueError("a response cache needs a positive TTL")
        timeout_s = REDIS_TIMEOUT_S if timeout_s is None else timeout_s
        self.client = redis_asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.clock = clock
        self.stats = ResponseCacheStats()
        self.description = f"Redis at {_without_password(url)}, TTL {ttl_s:g} s"
        self._down_until: float | None = None  # set while Redis is being left alone after an error

    async def get(self, key: str) -> bytes | None:
        self.stats.lookups += 1
        if self._resting():
            return None
        try:
            value = await self.client.get(REDIS_KEY_PREFIX + key)
        except Exception as exc:  # any client or network failure is a miss
            self._failed("read", exc)
            return None
        self._recovered()
        if value is not None:
            self.stats.hits += 1
        return value

    async def put(self, key: str, value: bytes) -> None:
        if self._resting():
            return
        try:
            await self.client.set(REDIS_KEY_PREFIX + key, value, px=self.ttl_ms)
        except Exception as exc:
            self._failed("write", exc)
            return
        self._recovered()
        self.stats.stored_bytes += len(value)

    def _resting(self) -> bool:
        return self._down_until is not None and self.clock() < self._down_until

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats.errors += 1
        if self._down_until is None:  # one warning per outage, not one per request
            logger.warning("response cache: Redis %s failed (%s: %s); answering as misses, retrying every %g s",
                           what, type(exc).__name__, exc, REDIS_RETRY_AFTER_S)
        self._down_until = self.clock() + REDIS_RETRY_AFTER_S

    def _recovered(self) -> None:
        if self._down_until is not None:
            logger.warning("response cache: Redis is back")
            self._down_until = None

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # closing a connection to a dead server must not fail shutdown
            logger.debug("closing the Redis client failed", exc_info=True)


def open_response_cache(spec: str, ttl_s: float) -> ResponseCache:
    """`spec` is a size such as 256MiB (in memory) or a redis:// or rediss:// URL."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisResponseCache(spec, ttl_s)
    return MemoryResponseCache(parse_size(spec), ttl_s)


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at and credentials else url
