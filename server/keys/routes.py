"""``GET /v1/keys[?all=true]`` (names, roles, prefixes; never the keys), ``POST /v1/keys {"name", "role"}``
(201, the key shown once), ``DELETE /v1/keys/{name}`` (revoke). Admin keys only; audited."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from server.auth import Principal, require_role
from server.keys.protocol import KeyCreated, KeyIn, KeyList, KeyView
from server.keys.service import KeyService


@get("/", summary="API keys (names, roles, prefixes; never the keys)")
async def list_keys(key_service: NamedDependency[KeyService],
                    all: Annotated[bool, QueryParameter(description="Include revoked keys.")] = False) -> KeyList:
    return await key_service.list(include_revoked=all)


@post("/", status_code=201, summary="Create a key (returned once, never again)")
async def create_key(request: Request[Principal, Any, Any], data: JSONBody[KeyIn],
                     key_service: NamedDependency[KeyService]) -> KeyCreated:
    return await key_service.create(data.name, data.role, by=request.user)


@delete("/{name:str}", status_code=200, summary="Revoke the active key called NAME (its sessions end at once)")
async def revoke_key(request: Request[Principal, Any, Any], name: FromPath[str],
                     key_service: NamedDependency[KeyService]) -> KeyView:
    return await key_service.revoke(name, by=request.user)


router = Router("/v1/keys", route_handlers=[list_keys, create_key, revoke_key], guards=[require_role("admin")],
                tags=["keys"])
