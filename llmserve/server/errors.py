"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`, never a stack trace."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from llmserve.sampling_params import InvalidParameter

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": _encodable(message), "type": _TYPES.get(status, "invalid_request_error"),
                      "param": None if param is None else _encodable(param), "code": code}}


def _encodable(text: str) -> str:
    # Messages and params may quote the client (a key, a value); a lone surrogate there would make the
    # error itself fail to encode as UTF-8, and a 400 a 500. Escape it as \udXXX instead.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def from_validation_error(exc: ValidationError | RequestValidationError, data: Any = None) -> APIError:
    """The first problem pydantic found, phrased for a client: which field, and what is wrong.

    This is where every invalid value of a request body becomes a 400: pydantic's own checks, and
    SamplingParams' InvalidParameter, which pydantic carries in the error's ctx. `data` is the body
    as parsed: with it the param keeps only real keys and indices, not pydantic's union-member tags
    ('prompt', not 'prompt.list[str].0').
    """
    problem = exc.errors()[0]
    cause = (problem.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidParameter):
        return APIError(400, str(cause), cause.param)
    location = [p for p in problem.get("loc", ()) if p != "body"]
    missing = problem.get("type") == "missing"
    if data is not None and location:
        # A missing field is the one part of the path that is, rightly, not in the body.
        location = _real_path(location[:-1], data) + location[-1:] if missing else _real_path(location, data)
    param = ".".join(map(str, location)) or None
    message = problem.get("msg", "invalid request")
    if missing:
        message = f"missing required field {param!r}"
    elif param:
        message = f"{param}: {message}"
    return APIError(400, message, param)


def _real_path(location: list[str | int], data: Any) -> list[str | int]:
    path = []
    for part in location:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            continue  # a union member's tag, which the client never wrote
        data = data[part]
        path.append(part)
    return path


# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a body that decoded as UTF-8.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


_MAX_INT_DIGITS = 4300


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 for anything Python's json would choke on later, not just now."""
    try:
        body = json.loads(raw, parse_constant=_no_constants, parse_int=_bounded_int)
    except RecursionError:  # the decoder recurses once per level of nesting
        raise APIError(400, "the request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, or an integer of more than 4300 digits
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):
        _check_unicode(body)
    return body


def _bounded_int(digits: str) -> int:
    # Python refuses to convert more than sys.get_int_max_str_digits() digits (4300), and its message
    # would tell the client to call sys.set_int_max_str_digits().
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits.lstrip('-'))} digits (the limit is {_MAX_INT_DIGITS})")
    return int(digits)


def _no_constants(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and every other client) does not.
    raise ValueError(f"{name} is not a JSON value")


def _check_unicode(body: dict[str, Any]) -> None:
    """A lone surrogate can be neither tokenized nor encoded as UTF-8 (into a response, a log line or a
    cache key): refuse it here, naming where it is. Iterative, as the body may nest deeply."""
    pending: list[tuple[Any, list[str | int]]] = [(body, [])]
    while pending:
        value, path = pending.pop()
        if isinstance(value, dict):
            pending += [(key, path) for key in value]  # keys are strings too
            pending += [(item, [*path, key]) for key, item in value.items()]
        elif isinstance(value, list):
            pending += [(item, [*path, index]) for index, item in enumerate(value)]
        elif isinstance(value, str) and not _is_utf8_encodable(value):
            param = ".".join(map(str, path)) or None
            raise APIError(400, f"{param or 'the body'}: a string holds a lone UTF-16 surrogate "
                                "(\\ud800-\\udfff), which is not Unicode text", param)


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def install_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_error(exc).response()

    async def on_http(_: Request, exc: HTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
