"""POST /v1/embeddings: OpenAI's embeddings API over the engine's pooling requests.

An embedding is the mean over the prompt's tokens of the model's last hidden states (after the
final norm), L2-normalised: the engine computes it (PoolingParams) while prefilling, batched with
everything else it runs. Each input is one engine request, admitted, shed and cached like a
completion's prompt; the response cache may hold embeddings, which are always deterministic.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import TYPE_CHECKING, Any, Literal

from fastapi.responses import Response
from pydantic import Field, StrictInt, field_validator

from llmserve.pooling_params import PoolingParams
from llmserve.server.errors import bad_request
from llmserve.server.protocol import ServedFields, TokenIds
from llmserve.server.serving import RequestContext, RequestLog, Serving, new_id

if TYPE_CHECKING:
    from llmserve.engine.outputs import RequestOutput

MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs


class EmbeddingRequest(ServedFields):
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)  # honoured only as the model's own size: no truncation

    @field_validator("input")
    @classmethod
    def _nothing_empty(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be an empty list")
            if len(value) > MAX_INPUTS:
                raise ValueError(f"input may hold at most {MAX_INPUTS} entries, got {len(value)}")
        items = value if isinstance(value, list) else [value]
        if any(not isinstance(item, int) and len(item) == 0 for item in items):
            raise ValueError("input must not hold an empty string or an empty list of token ids")
        return value

    def inputs(self) -> list[str | list[int]]:
        """One entry per embedding: a string, or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, int) for item in self.input):
            return [list(self.input)]
        return list(self.input)


async def create_embedding(serving: Serving, body: EmbeddingRequest, ctx: RequestContext) -> Response:
    serving.check_model(body.model)
    size = serving.engine.engine.model_config.hidden_size
    if body.dimensions is not None and body.dimensions != size:
        raise bad_request(f"dimensions must be {size}, this model's embedding size: it cannot shorten its embeddings",
                          "dimensions")
    params = PoolingParams()
    request_id, created = new_id("embd"), int(time.time())
    log = RequestLog(request_id, ctx.received)
    inputs = body.inputs()
    cache = serving.cache_use("embeddings", body, params, inputs, ctx)
    if (cached := await serving.cached_reply(cache, request_id, created, log)) is not None:
        return cached
    prompts = [{"prompt_token_ids": p} if isinstance(p, list) else p for p in inputs]
    prepared = await serving.queue_prompts(request_id, prompts, params, ctx.rank, "input")
    log.prompt_tokens = sum(len(q.prepared.prompt_token_ids) for q in prepared)
    placed = await serving.place(prepared)
    finals = await serving.final_outputs(prepared, ctx, log)
    log.emit()
    data = [{"object": "embedding", "index": i, "embedding": _encoded(_embedding(final), body.encoding_format)}
            for i, final in enumerate(finals)]
    reply = {"id": request_id, "object": "list", "created": created, "model": serving.model_name, "data": data,
             "usage": {"prompt_tokens": log.prompt_tokens, "total_tokens": log.prompt_tokens}}
    return await serving.reply(cache, reply, placed)


def _embedding(final: RequestOutput) -> list[float]:
    if final.embedding is None:  # the engine's contract: a pooling request finishes with its embedding
        raise RuntimeError(f"request {final.request_id} finished without its embedding")
    return final.embedding


def _encoded(embedding: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return embedding
    # OpenAI's base64: the float32 values' little-endian bytes, which its client reads back with numpy.
    return base64.b64encode(struct.pack(f"<{len(embedding)}f", *embedding)).decode("ascii")
