"""``POST /v1/query``: cited answers (or evidence only) as JSON or server-sent events."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from server import sse
from server.auth import Principal, require_role
from server.query.protocol import QueryRequest, QueryResponse
from server.query.service import QueryService


@post("/query", status_code=200, summary="Answer a question with cited PubMed evidence",
      description="mode='answer' (default) retrieves evidence, generates an answer and verifies its citations; "
      "mode='search' returns the evidence only. stream=true sends server-sent events: 'evidence', then "
      "'delta' events ({\"text\"}), then 'citations', then 'done' ('error' if generation fails midway).")
async def query(request: Request[Principal, Any, Any], data: JSONBody[QueryRequest],
                query_service: NamedDependency[QueryService]) -> QueryResponse | Stream:
    if data.mode == "search":
        return await query_service.search(data)
    if data.stream:
        return sse.stream(await query_service.answer_events(data, requester=request.user.key_id))
    return await query_service.answer(data, requester=request.user.key_id)


router = Router("/v1", route_handlers=[query], guards=[require_role("reader")], tags=["query"])
