"""``GET /health`` (readiness: vLLM and the index), ``GET /metrics`` (Prometheus) and
``GET /v1/articles/{pmid}`` (one stored article)."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
from litestar import Response, Router, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST

from pubmind.errors import NotFound, PubmindError
from pubmind.records import Article
from server.auth import require_role
from server.resources import Resources


class ArticleResponse(msgspec.Struct, kw_only=True):
    url: str
    article: Article
    retracted: bool


@get("/health", summary="Readiness: 200 when vLLM and the index are both up, 503 with the reason otherwise")
async def health(resources: NamedDependency[Resources]) -> Response[dict[str, Any]]:
    reasons: list[str] = []
    vllm: dict[str, Any] = {"url": resources.vllm.base_url}
    sup = resources.supervisor
    if sup is not None:
        vllm.update(state=sup.state, pid=sup.pid, restarts=sup.restarts)
        if sup.state != "ready":
            reasons.append(sup.reason)
    if not reasons:
        try:
            await resources.vllm.health()
        except PubmindError as e:
            reasons.append(e.message)
    index: dict[str, Any] = {}
    try:
        await resources.ensure_index()
        index = {"version": resources.index_version, **resources.index.info()}
    except PubmindError as e:
        reasons.append(e.message)
    ready = not reasons
    body = {"status": "ready" if ready else "unavailable", "reason": "; ".join(reasons) or None,
            "vllm": vllm, "index": index}
    return Response(body, status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE)


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(resources: NamedDependency[Resources]) -> Response[bytes]:
    return Response(resources.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@get("/v1/articles/{pmid:int}", summary="One stored article (PubMed record)", guards=[require_role("reader")])
async def article(pmid: FromPath[int], resources: NamedDependency[Resources]) -> ArticleResponse:
    found = await anyio.to_thread.run_sync(resources.store.get, pmid)
    if found is None:
        raise NotFound(f"PMID {pmid} is not in the corpus", param="pmid")
    return ArticleResponse(url=found.url, article=found, retracted=found.retracted)


router = Router("/", route_handlers=[health, metrics, article], tags=["system"])
