"""HTTP routes. A request is checked against the queue before its body is read, and once more for
its own service class after the JSON is parsed: either way before any tokenization or model work."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

import llmserve
from llmserve.server.chat import create_chat_completion
from llmserve.server.completions import create_completion
from llmserve.server.embeddings import EmbeddingRequest, create_embedding
from llmserve.server.errors import APIError, from_validation_error, parse_json
from llmserve.server.protocol import ChatCompletionRequest, CompletionRequest, body_schemas
from llmserve.server.serving import RequestContext
from llmserve.server.tokenize import (
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    detokenize,
    tokenize,
    tokenize_model,
)

if TYPE_CHECKING:
    from llmserve.server.app import ServerState
    from llmserve.server.serving import Serving


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def require_api_key(request: Request) -> None:
    expected = server_state(request).config.api_key
    if expected is None:
        return
    token = _bearer_token(request)
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise APIError(401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
# vLLM serves the tokenizer at the root, not under /v1; the key guards it all the same.
tokenizer_routes = APIRouter(dependencies=[Depends(require_api_key)])
DOCUMENTED_BODIES = (CompletionRequest, ChatCompletionRequest, EmbeddingRequest, TokenizeCompletionRequest,
                     TokenizeChatRequest, DetokenizeRequest)


@router.get("/health")
async def health(request: Request) -> Response:
    state = server_state(request)
    if state.healthy:
        return Response(status_code=200)
    reason = state.load_error or ("the engine has stopped" if state.ready else "the model is loading")
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": llmserve.__version__}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = server_state(request).metrics.render()
    return Response(body, media_type=content_type)


@v1.get("/models")
async def models(request: Request) -> dict:
    state = server_state(request)
    card = {"id": state.config.served_model_name, "object": "model", "created": state.created,
            "owned_by": "llmserve"}
    if state.engine is not None:
        card["max_model_len"] = state.engine.engine.max_model_len
    return {"object": "list", "data": [card]}


def _documented_body(*models: type[BaseModel]) -> dict[str, Any]:
    """The requestBody of a route that reads its body itself (see _accept), for the OpenAPI document:
    one model, or any of several."""
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def document_request_bodies(app: FastAPI) -> None:
    """Put the bodies' schemas under components/schemas, where _documented_body's references point.

    FastAPI only lists the models of parameters it parses itself, and these routes must not let it:
    admission runs before the body is read."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            build().setdefault("components", {}).setdefault("schemas", {}).update(body_schemas(DOCUMENTED_BODIES))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@v1.post("/completions", openapi_extra=_documented_body(CompletionRequest))
async def completions(request: Request) -> Response:
    serving, body, ctx = await _accept(request, CompletionRequest)
    return await create_completion(serving, body, ctx)


@v1.post("/chat/completions", openapi_extra=_documented_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    serving, body, ctx = await _accept(request, ChatCompletionRequest)
    return await create_chat_completion(serving, body, ctx)


@v1.post("/embeddings", openapi_extra=_documented_body(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    serving, body, ctx = await _accept(request, EmbeddingRequest)
    return await create_embedding(serving, body, ctx)


@tokenizer_routes.post("/tokenize", openapi_extra=_documented_body(TokenizeCompletionRequest, TokenizeChatRequest))
async def tokenize_route(request: Request) -> Response:
    serving = _serving(request)  # no admission: tokenizing is no engine work, and never waits in its queue
    data = parse_json(await request.body())
    return JSONResponse(await tokenize(serving, _validated(tokenize_model(data), data)))


@tokenizer_routes.post("/detokenize", openapi_extra=_documented_body(DetokenizeRequest))
async def detokenize_route(request: Request) -> Response:
    serving = _serving(request)
    return JSONResponse(await detokenize(serving, await _parse(request, DetokenizeRequest)))


Body = TypeVar("Body", bound=BaseModel)


async def _accept(request: Request, model: type[Body]) -> tuple[Serving, Body, RequestContext]:
    """Admission before the body is read, then the body, then the request's class."""
    serving, received, header_rank = _admit(request)
    body = await _parse(request, model)
    rank = header_rank if header_rank is not None else _rank(server_state(request), body.priority, "priority")
    return serving, body, RequestContext(received, rank, _bearer_token(request),
                                         request.headers.get("cache-control", ""), request.receive)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _admit(request: Request) -> tuple[Serving, float, int | None]:
    """Refuse at once, before reading the body, when no class could get in (or the header's cannot)."""
    received = time.monotonic()
    state = server_state(request)
    serving = _serving(request)
    # The X-Priority header (what a gateway sets per tenant) wins over the body's `priority`.
    header = request.headers.get("x-priority")
    header_rank = None if header is None else _rank(state, header, "X-Priority")
    # Class 0 is the least likely to be refused; the request's own class is checked again, with
    # its prompts' queue entry, once the body names it (Serving.queue_prompts).
    serving.check_class(0 if header_rank is None else header_rank)
    return serving, received, header_rank


def _serving(request: Request) -> Serving:
    """The serving state, or a 503 while the model loads."""
    state = server_state(request)
    if not state.ready or state.serving is None or state.shedder is None:
        raise APIError(503, "the model is still loading; retry shortly", code="loading",
                       headers={"Retry-After": "1"})
    return state.serving


def _rank(state: ServerState, value: int | str | None, param: str) -> int:
    try:
        return state.shedder.classes.rank(value)
    except ValueError as exc:
        raise APIError(400, f"{param}: {exc}", param=param.lower()) from None


async def _parse(request: Request, model: type[Body]) -> Body:
    """The body, validated: every way a client's value can be wrong becomes a 400 naming it, here."""
    data = parse_json(await request.body())
    return _validated(model, data)


def _validated(model: type[Body], data: dict[str, Any]) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, data) from None


router.include_router(v1)
router.include_router(tokenizer_routes)
