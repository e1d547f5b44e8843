"""Adapter versions: ``GET /v1/adapters`` (every adapter, its versions with manifests and evaluation reports,
the current one, promotion history), ``POST /v1/adapters/{name}/promote {"version"}`` and
``POST /v1/adapters/{name}/rollback`` (admin). Promotion/rollback moves the registry alias (the source of
truth, which a restart serves again) and loads ``NAME@vN`` into the running vLLM, unloading older versions
beyond ``settings.finetune.keep_loaded``."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from finetune.registry import AdapterRegistry
from generation.deploy import AdapterDeployer
from server.auth import require_role


class PromoteIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: Annotated[int, msgspec.Meta(ge=1, description="Version number N of NAME@vN to serve.")]


@get("/", summary="Adapters, their versions (manifest, evaluation) and the current one",
     guards=[require_role("reader")])
async def list_adapters(registry: NamedDependency[AdapterRegistry]) -> dict[str, Any]:
    return {"data": await anyio.to_thread.run_sync(registry.summary)}


@post("/{name:str}/promote", status_code=200, summary="Serve a version of an adapter", guards=[require_role("admin")])
async def promote(request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[PromoteIn],
                  registry: NamedDependency[AdapterRegistry],
                  deployer: NamedDependency[AdapterDeployer]) -> dict[str, Any]:
    v = await anyio.to_thread.run_sync(lambda: registry.promote(name, data.version, by=request.user.name,
                                                                reason="manual promotion"))
    served = await deployer.deploy(name)
    return {"adapter": name, "current": v.version, "lora_name": v.lora_name, "served": served}


@post("/{name:str}/rollback", status_code=200, summary="Serve the previously current version again",
      guards=[require_role("admin")])
async def rollback(request: Request[Any, Any, Any], name: FromPath[str], registry: NamedDependency[AdapterRegistry],
                   deployer: NamedDependency[AdapterDeployer]) -> dict[str, Any]:
    v = await anyio.to_thread.run_sync(lambda: registry.rollback(name, by=request.user.name, reason="rollback"))
    served = await deployer.deploy(name)
    return {"adapter": name, "current": v.version, "lora_name": v.lora_name, "served": served}


router = Router("/v1/adapters", route_handlers=[list_adapters, promote, rollback], tags=["adapters"])
