"""The exact-match response cache at the HTTP edge: which requests may use it, under what key,
and how a response is recorded and replayed.

Only a request whose answer is fully determined is cached: greedy (temperature 0), seeded, or an
embedding. Its key hashes the endpoint, the model, the normalized body (defaults filled in, so an absent
field and its default are the same request) with the prompt after chat templating, and the
caller's API key, so callers with different keys never share an entry unless the server is
told to. A plain response is stored as its body; a streamed one as its chunks, which a hit
replays one by one. Either way a hit gets a fresh id and timestamp, `X-Cache: hit`, and
`"cached": true` in its usage.

A request opts out with `"cache": false` (neither read nor stored) or the Cache-Control header:
`no-store` likewise, `no-cache` skips the lookup but stores the fresh answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from llmserve.server.response_cache import ResponseCache

if TYPE_CHECKING:
    from llmserve.pooling_params import PoolingParams
    from llmserve.sampling_params import SamplingParams

logger = logging.getLogger("llmserve.server")

# Fields that do not change the answer: who asks, how urgently, and the cache switch itself.
# `model` is checked against the served name, which is keyed instead; the prompt goes in after
# templating; and the sampling fields go in as the SamplingParams they make, defaults filled in.
NOT_IN_KEY = frozenset({"user", "priority", "cache", "model", "prompt", "messages"})
SAMPLING_FIELDS = frozenset({
    "n", "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "stop", "stop_token_ids", "ignore_eos", "min_tokens", "skip_special_tokens",
    "include_stop_str_in_output", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs",
    "response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar",  # as params.guided
})
HIT, MISS, BYPASS = "hit", "miss", "bypass"


@dataclass(frozen=True)
class CacheUse:
    """What the response cache does for one request."""

    key: str | None = None
    read: bool = False
    write: bool = False

    @property
    def status(self) -> str:
        return MISS if self.read or self.write else BYPASS  # no-cache: not looked up, but stored

    def headers(self, hit: bool = False) -> dict[str, str]:
        return {"X-Cache": HIT if hit else self.status}


NO_CACHE = CacheUse()


def is_deterministic(params: SamplingParams | PoolingParams) -> bool:
    # Pooling samples nothing: an embedding is always determined by its input.
    return not hasattr(params, "temperature") or params.temperature == 0 or params.seed is not None


class ResponseCacheFront:
    """Decides, looks up and stores for one server; `cache` holds the bytes."""

    def __init__(self, cache: ResponseCache, model_identity: str, share_across_api_keys: bool = False) -> None:
        self.cache = cache
        self.model_identity = model_identity
        self.share_across_api_keys = share_across_api_keys

    def use(self, endpoint: str, body: BaseModel, params: SamplingParams | PoolingParams, prompts: list[Any],
            api_key: str | None, cache_control: str) -> CacheUse:
        directives = {part.strip().split("=")[0] for part in cache_control.lower().split(",")}
        if getattr(body, "cache", None) is False or "no-store" in directives or not is_deterministic(params):
            return NO_CACHE
        scope = "" if self.share_across_api_keys or not api_key else hashlib.sha256(api_key.encode()).hexdigest()
        request = {"endpoint": endpoint, "model": self.model_identity, "scope": scope, "prompts": prompts,
                   "params": _params_key(params),
                   "body": body.model_dump(mode="json", exclude=NOT_IN_KEY | SAMPLING_FIELDS)}
        text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return CacheUse(hashlib.sha256(text.encode()).hexdigest(), read="no-cache" not in directives, write=True)

    async def lookup(self, use: CacheUse) -> dict[str, Any] | None:
        if not use.read:
            return None
        raw = await self.cache.get(use.key)
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not _is_entry(entry):
            logger.warning("response cache: unreadable entry %s… ignored", use.key[:12])
            return None  # written by something else (another version?): a miss, never a failure
        return entry

    async def store_body(self, use: CacheUse, body: dict[str, Any]) -> None:
        if use.write:
            await self.cache.put(use.key, _encode({"body": body}))

    async def recorded(self, use: CacheUse, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Passes the stream's chunks through and stores them once it ends whole (no error, no hang-up)."""
        chunks: list[dict[str, Any]] = []
        async for event in events:
            if "error" in event:
                use = NO_CACHE
            chunks.append(event)
            yield event
        if use.write:
            await self.cache.put(use.key, _encode({"chunks": chunks}))


def _params_key(params: SamplingParams | PoolingParams) -> dict[str, Any]:
    fields = asdict(params)
    # The constraint by what it compiles to: the same schema sent as response_format or guided_json
    # is one request.
    if "guided" in fields:
        fields["guided"] = None if params.guided is None else list(params.guided.key)
    return fields


def _is_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and (isinstance(entry.get("body"), dict) or isinstance(entry.get("chunks"), list))


def replay_body(entry: dict[str, Any], request_id: str, created: int) -> dict[str, Any]:
    return _fresh(entry["body"], request_id, created)


async def replay_chunks(entry: dict[str, Any], request_id: str, created: int) -> AsyncIterator[dict[str, Any]]:
    for chunk in entry["chunks"]:
        yield _fresh(chunk, request_id, created)


def is_stream_entry(entry: dict[str, Any]) -> bool:
    return "chunks" in entry


def _fresh(payload: dict[str, Any], request_id: str, created: int) -> dict[str, Any]:
    fresh = {**payload, "id": request_id, "created": created}
    if fresh.get("usage"):
        fresh["usage"] = {**fresh["usage"], "cached": True}
    return fresh


def _encode(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()
