"""Server-sent events framing, shared by ``/v1/query`` (named events) and the OpenAI endpoints (``data:``
chunks ending with ``[DONE]``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.response import Stream

from pubmind.errors import PubmindError
from server.errors import error_body

# Content-Type set as a header too: Litestar lets a handler's JSON default override Stream(media_type=...) when
# the handler may also return JSON.
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"

_enc = msgspec.json.Encoder()


def event(name: str, data: Any) -> bytes:
    """``event: NAME`` + ``data: JSON`` (named events, /v1/query)."""
    return b"event: " + name.encode() + b"\ndata: " + _enc.encode(data) + b"\n\n"


def data(payload: Any) -> bytes:
    """``data: JSON`` (OpenAI chunks)."""
    return b"data: " + _enc.encode(payload) + b"\n\n"


def error_payload(e: PubmindError) -> dict[str, Any]:
    return error_body(e.message, e.status, param=e.param, code=e.code)


def stream(events: AsyncIterator[bytes]) -> Stream:
    return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS)
