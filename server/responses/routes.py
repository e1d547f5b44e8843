"""``POST /v1/responses``: OpenAI's Responses API (plain text in and out), whole or streamed."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from server import sse
from server.auth import Principal, require_role
from server.responses.protocol import ResponseObject, ResponseRequest
from server.responses.service import ResponsesService


@post("/responses", status_code=200, summary="OpenAI Responses API: a cited answer as plain text",
      description="input: a string or messages with text parts; the same retrieval, citations and url_citation "
      "annotations as /v1/chat/completions. stream=true sends the Responses API's server-sent events.")
async def create_response(request: Request[Principal, Any, Any], data: JSONBody[ResponseRequest],
                          responses_service: NamedDependency[ResponsesService]) -> ResponseObject | Stream:
    if data.stream:
        return sse.stream(await responses_service.events(data, requester=request.user.key_id))
    return await responses_service.create(data, requester=request.user.key_id)


router = Router("/v1", route_handlers=[create_response], guards=[require_role("reader")], tags=["openai"])
