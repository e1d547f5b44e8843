"""The ONE place where exceptions become HTTP responses.

Every error body has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so OpenAI clients
surface the message unchanged. ``pubmind.errors.PubmindError`` carries its status and code; Litestar's own
exceptions (bad JSON, validation, 404 route, 405, 413 body too large) are rewritten with a message naming the
field; anything else is logged with its traceback and answered as a generic 500 without internals.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from pubmind.errors import PubmindError, RateLimited

log = logging.getLogger("pubmind.server")

# OpenAI's "type" values for each status (clients switch on these).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
}
_BACKTICK = re.compile(r"`([^`]+)`")


def error_body(message: str, status: int, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def error_response(message: str, status: int, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:
    return Response(error_body(message, status, param=param, code=code), status_code=status, headers=headers)


def _pubmind(_: Request, exc: PubmindError) -> Response[dict[str, Any]]:
    if exc.status >= 500:
        log.warning("%s %s: %s", exc.status, type(exc).__name__, exc.message)
    headers = None
    retry_after = getattr(exc, "retry_after", None) if isinstance(exc, RateLimited) else None
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    return error_response(exc.message, exc.status, param=exc.param, code=exc.code, headers=headers)


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    """Litestar's [{"message", "key", "source"}] -> one sentence naming the field, and the field."""
    items = exc.extra if isinstance(exc.extra, list) else []
    parts, param = [], None
    for item in items:
        if not isinstance(item, dict):
            continue
        msg, key = str(item.get("message", "")), item.get("key")
        field = key if key and key != "data" else None
        if field is None:  # "Object missing required field `question`" -> question
            m = _BACKTICK.search(msg) if "field" in msg else None
            field = m.group(1) if m else None
        param = param or field
        parts.append(f"{msg} (field {field!r})" if field and field not in msg else msg)
    if not parts:
        return str(exc.detail), None
    return "Invalid request body: " + "; ".join(parts), param


def _is_decode_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, msgspec.DecodeError) or "JSON is malformed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _http(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    param = None
    if isinstance(exc, ValidationException):
        message, param = _validation_message(exc)
    elif status == 400 and _is_decode_error(exc):
        message = f"Invalid request body: not valid JSON ({exc.detail.split(': ', 1)[-1]})"
    elif status == 404:
        message = f"No route for {request.method} {request.url.path}"
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    elif status == 413:
        limit = getattr(request.app, "request_max_body_size", None)
        message = f"Request body too large (limit {limit} bytes, settings.server.max_body_bytes)"
    else:
        message = str(exc.detail)
    code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(status)
    return error_response(message, status, param=param, code=code or (_TYPES.get(status) if status < 500 else None),
                          headers=exc.headers)


def _internal(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(f"Internal server error ({type(exc).__name__}); see the server log", 500,
                          code="internal_error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    PubmindError: _pubmind,
    HTTPException: _http,
    Exception: _internal,
}
