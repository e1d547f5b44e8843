"""``GET /v1/adapters`` (reader: names, versions, headline metrics; admin: the full record),
``POST /v1/adapters/{name}/promote {"version"}`` and ``POST /v1/adapters/{name}/rollback`` (admin)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from server.adapters.protocol import AdapterList, AdapterRecords, Promoted, PromoteIn
from server.adapters.service import AdapterService
from server.auth import Principal, require_role


@get("/", summary="Adapters, their versions and headline metrics (admins: manifests, evaluation, history)",
     guards=[require_role("reader")])
async def list_adapters(request: Request[Principal, Any, Any],
                        adapter_service: NamedDependency[AdapterService]) -> AdapterList | AdapterRecords:
    return await adapter_service.list(detail=request.user.allows("admin"))


@post("/{name:str}/promote", status_code=200, summary="Serve a version of an adapter", guards=[require_role("admin")])
async def promote(request: Request[Principal, Any, Any], name: FromPath[str], data: JSONBody[PromoteIn],
                  adapter_service: NamedDependency[AdapterService]) -> Promoted:
    return await adapter_service.promote(name, data.version, by=request.user)


@post("/{name:str}/rollback", status_code=200, summary="Serve the previously current version again",
      guards=[require_role("admin")])
async def rollback(request: Request[Principal, Any, Any], name: FromPath[str],
                   adapter_service: NamedDependency[AdapterService]) -> Promoted:
    return await adapter_service.rollback(name, by=request.user)


router = Router("/v1/adapters", route_handlers=[list_adapters, promote, rollback], tags=["adapters"])
