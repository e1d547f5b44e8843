"""``POST /v1/query``: cited answers (or evidence only) as JSON or server-sent events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from pubmind.errors import PubmindError
from server.auth import require_role
from server.errors import error_body
from server.query.protocol import SSE_HEADERS, QueryRequest, QueryResponse
from server.rag import RagService, StreamRelay, evidence_of, primed, search_id

_enc = msgspec.json.Encoder()


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _enc.encode(data) + b"\n\n"


@post("/query", status_code=200, summary="Answer a question with cited PubMed evidence",
      description="mode='answer' (default) retrieves evidence, generates an answer and verifies its citations; "
      "mode='search' returns the evidence only. stream=true sends server-sent events: 'evidence', then "
      "'delta' events ({\"text\"}), then 'citations', then 'done' ('error' if generation fails midway).")
async def query(data: JSONBody[QueryRequest], rag: NamedDependency[RagService]) -> QueryResponse | Stream:
    filters = data.filters.to_filters() if data.filters else None
    if data.mode == "search":
        question = rag.check_question(data.question)
        k = rag.check_k(data.k)
        t0 = time.perf_counter()
        hits, retrieval_ms = await rag.search(question, k, data.retrieval, filters)
        return QueryResponse(id=search_id(), answer=None, citations=[], unsupported_citations=[],
                             evidence=evidence_of(hits), model=data.model, adapter=None,
                             index_version=rag.res.index_version,
                             timings_ms={"retrieval": retrieval_ms, "total": (time.perf_counter() - t0) * 1000})

    prep = await rag.prepare(data.question, k=data.k, mode=data.retrieval, filters=filters, model=data.model,
                             max_tokens=data.max_tokens)
    if not data.stream:
        ans = await rag.generate(prep)
        return QueryResponse(
            id=ans.id, answer=ans.text, citations=ans.citations, unsupported_citations=ans.unsupported,
            evidence=prep.evidence, model=prep.model, adapter=prep.adapter, index_version=prep.index_version,
            timings_ms=ans.timings_ms, finish_reason=ans.finish_reason,
            usage={"prompt_tokens": ans.prompt_tokens, "completion_tokens": ans.completion_tokens})

    t_gen = time.perf_counter()
    relay = StreamRelay(rag, prep, await primed(rag.stream(prep)), t_gen)

    async def events() -> AsyncIterator[bytes]:
        yield sse("evidence", {"evidence": prep.evidence, "model": prep.model, "adapter": prep.adapter,
                               "index_version": prep.index_version})
        try:
            async for text in relay.texts():
                yield sse("delta", {"text": text})
            ans = await relay.finish()
        except PubmindError as e:
            yield sse("error", error_body(e.message, e.status, param=e.param, code=e.code))
            return
        yield sse("citations", {"id": ans.id, "answer": ans.text, "citations": ans.citations,
                                "unsupported_citations": ans.unsupported})
        yield sse("done", {"id": ans.id, "finish_reason": ans.finish_reason, "timings_ms": ans.timings_ms,
                           "usage": {"prompt_tokens": ans.prompt_tokens, "completion_tokens": ans.completion_tokens}})

    return Stream(events(), media_type="text/event-stream", headers=SSE_HEADERS)


router = Router("/v1", route_handlers=[query], guards=[require_role("reader")], tags=["query"])
