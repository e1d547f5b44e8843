"""``QueryService``: ``/v1/query`` over the answer pipeline (``server.rag``): evidence only, a whole answer,
or the answer as named server-sent events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from pubmind.errors import PubmindError
from server import sse
from server.query.protocol import QueryRequest, QueryResponse
from server.rag import Prepared, RagService, StreamRelay, evidence_of, search_id


class QueryService:
    def __init__(self, rag: RagService) -> None:
        self.rag = rag

    async def search(self, req: QueryRequest) -> QueryResponse:
        t0 = time.perf_counter()
        question, k = self.rag.check_question(req.question), self.rag.check_k(req.k)
        found = await self.rag.search(question, k, req.retrieval, req.filters.to_filters() if req.filters else None)
        return QueryResponse(id=search_id(), answer=None, citations=[], unsupported_citations=[],
                             evidence=evidence_of(found.hits), model=req.model, adapter=None,
                             index_version=found.index_version,
                             timings_ms={"retrieval": found.retrieval_ms, "total": (time.perf_counter() - t0) * 1000})

    async def _prepare(self, req: QueryRequest, requester: str | None) -> Prepared:
        return await self.rag.prepare(req.question, k=req.k, mode=req.retrieval, model=req.model,
                                      filters=req.filters.to_filters() if req.filters else None,
                                      max_tokens=req.max_tokens, requester=requester)

    async def answer(self, req: QueryRequest, *, requester: str | None = None) -> QueryResponse:
        """``requester``: the asking key's id, kept with the stored answer."""
        prep = await self._prepare(req, requester)
        ans = await self.rag.generate(prep)
        return QueryResponse(
            id=ans.id, answer=ans.text, citations=ans.citations, unsupported_citations=ans.unsupported,
            evidence=prep.evidence, model=prep.model, adapter=prep.adapter, index_version=prep.index_version,
            timings_ms=ans.timings_ms, finish_reason=ans.finish_reason,
            usage={"prompt_tokens": ans.prompt_tokens, "completion_tokens": ans.completion_tokens})

    async def answer_events(self, req: QueryRequest, *, requester: str | None = None) -> AsyncIterator[bytes]:
        """Events ``evidence``, ``delta``..., ``citations``, ``done`` (``error`` if generation fails midway).
        Validation, retrieval and vLLM's first token happen before this returns (HTTP errors, not events)."""
        prep = await self._prepare(req, requester)
        relay = await StreamRelay.start(self.rag, prep)

        async def events() -> AsyncIterator[bytes]:
            yield sse.event("evidence", {"evidence": prep.evidence, "model": prep.model, "adapter": prep.adapter,
                                         "index_version": prep.index_version})
            try:
                async for text in relay.texts():
                    yield sse.event("delta", {"text": text})
                ans = await relay.finish()
            except PubmindError as e:
                await relay.abandon("error")
                yield sse.event("error", sse.error_payload(e))
                return
            finally:
                await relay.abandon("client_disconnected")  # a no-op once finished
            yield sse.event("citations", {"id": ans.id, "answer": ans.text, "citations": ans.citations,
                                          "unsupported_citations": ans.unsupported})
            yield sse.event("done", {"id": ans.id, "finish_reason": ans.finish_reason, "timings_ms": ans.timings_ms,
                                     "usage": {"prompt_tokens": ans.prompt_tokens,
                                               "completion_tokens": ans.completion_tokens}})

        return events()
