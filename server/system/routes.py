"""``GET /health`` (readiness: vLLM and the index), ``GET /metrics`` (Prometheus) and
``GET /v1/articles/{pmid}`` (one stored article)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, get
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST

from pubmind.errors import Unauthorized
from server.auth import KeyStore, principal_from_header, require_role
from server.system.protocol import MAX_PMID, ArticleResponse, HealthResponse
from server.system.service import SystemService


@get("/health", summary="Readiness: 200 when vLLM and the index are both up, 503 with the reason otherwise",
     description="No key needed; an admin key adds the vLLM and index details.")
async def health(request: Request[Any, Any, Any], system_service: NamedDependency[SystemService],
                 key_store: NamedDependency[KeyStore | None]) -> Response[HealthResponse]:
    try:
        admin = principal_from_header(request.headers.get("authorization", ""), key_store).allows("admin")
    except Unauthorized:  # a probe without (or with a bad) key gets the public answer
        admin = False
    body = await system_service.health(detail=admin)
    return Response(body, status_code=HTTP_200_OK if body.status == "ready" else HTTP_503_SERVICE_UNAVAILABLE)


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(system_service: NamedDependency[SystemService]) -> Response[bytes]:
    return Response(system_service.metrics_text(), media_type=CONTENT_TYPE_LATEST)


@get("/v1/articles/{pmid:int}", summary="One stored article (PubMed record)", guards=[require_role("reader")])
async def article(pmid: Annotated[int, Parameter(ge=1, le=MAX_PMID)],
                  system_service: NamedDependency[SystemService]) -> ArticleResponse:
    return await system_service.article(pmid)


router = Router("/", route_handlers=[health, metrics, article], tags=["system"])
