"""The one adapter deployer: keeps the running vLLM in line with the adapter registry.

Plan (what to load, what to unload), load, unload and verify, over the async vLLM client. The API server
(promotion, rollback, on-demand loading of a requested version) and the re-tune job (preloading a candidate
before the alias moves, unloading a rejected one) both call it; the job process runs it with ``asyncio.run``.

Adapters are served under ``NAME@vN`` (never a same-name reload); the registry's alias ``NAME`` says which
version is current, and the ``keep_loaded`` most recently current versions of each name stay loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from generation.vllm_client import VllmClient
from pubmind.errors import NotFound, PubmindError
from pubmind.settings import Settings

T = TypeVar("T")


class AdapterVersion(Protocol):
    """What the deployer needs of a registry version (``finetune.registry.AdapterVersion``)."""

    @property
    def lora_name(self) -> str: ...  # NAME@vN

    @property
    def path(self) -> str: ...  # the adapter folder vLLM loads


class AdapterCatalog(Protocol):
    """What the deployer needs of the registry (``finetune.registry.AdapterRegistry``)."""

    def current(self, name: str) -> AdapterVersion | None: ...

    def recent(self, name: str, n: int) -> list[int]: ...  # version numbers, most recently current first

    def resolve(self, model: str) -> AdapterVersion: ...  # NAME or NAME@vN


@dataclass(frozen=True)
class DeployPlan:
    load: list[str] = field(default_factory=list)  # lora names to load
    unload: list[str] = field(default_factory=list)  # lora names to unload


def plan_deploy(catalog: AdapterCatalog, name: str, keep_loaded: int, loaded: set[str]) -> DeployPlan:
    """The current version of ``name`` must be loaded; versions of ``name`` that are not among the
    ``keep_loaded`` most recently current ones are unloaded."""
    current = catalog.current(name)
    if current is None:
        raise NotFound(f"adapter {name!r} has no promoted version to serve", param="adapter")
    keep = kept_versions(catalog, name, keep_loaded)
    load = [current.lora_name] if current.lora_name not in loaded else []
    unload = sorted(x for x in loaded if x.startswith(f"{name}@v") and x not in keep)
    return DeployPlan(load=load, unload=unload)


def kept_versions(catalog: AdapterCatalog, name: str, keep_loaded: int) -> set[str]:
    return {f"{name}@v{v}" for v in catalog.recent(name, keep_loaded)}


class AdapterDeployer:
    """Loads and unloads adapter versions in one vLLM server, serialised by one lock."""

    def __init__(self, client: VllmClient, catalog: AdapterCatalog, *, keep_loaded: int) -> None:
        assert keep_loaded >= 1, keep_loaded
        self.client, self.catalog, self.keep_loaded = client, catalog, keep_loaded
        self._lock = asyncio.Lock()
        self._known: set[str] = set()  # lora names vLLM was last seen serving

    async def loaded(self) -> set[str]:
        """The model names vLLM serves now (base and adapters); raises ServiceUnavailable when unreachable."""
        self._known = set(await self.client.models())
        return set(self._known)

    async def ensure_loaded(self, lora_name: str, path: str, *, refresh: bool = False) -> bool:
        """Load ``lora_name`` from ``path`` unless vLLM already serves it; True when it was loaded now.
        ``refresh`` asks vLLM again instead of trusting the last answer (after a vLLM restart)."""
        if lora_name in self._known and not refresh:
            return False
        async with self._lock:
            if lora_name in await self.loaded():
                return False
            await self.client.load_lora_adapter(lora_name, path)
            self._known.add(lora_name)
            return True

    async def unload(self, lora_name: str) -> bool:
        """Unload ``lora_name`` if vLLM serves it; True when it was unloaded now."""
        async with self._lock:
            if lora_name not in await self.loaded():
                return False
            await self.client.unload_lora_adapter(lora_name)
            self._known.discard(lora_name)
            return True

    async def verify(self, lora_name: str) -> bool:
        """Whether vLLM serves ``lora_name`` now."""
        return lora_name in await self.loaded()

    async def deploy(self, name: str) -> dict[str, Any]:
        """Load the current version of ``name`` and unload its versions beyond ``keep_loaded``. When vLLM is not
        reachable the registry change still stands (a restarted vLLM gets the current versions as
        --lora-modules); the result says so."""
        serving = self.catalog.current(name)
        try:
            loaded = await self.loaded()
        except PubmindError as e:
            return {"serving": serving and serving.lora_name,
                    "vllm": f"not reachable ({e.message}); served from the registry when vLLM (re)starts"}
        plan = plan_deploy(self.catalog, name, self.keep_loaded, loaded)
        async with self._lock:
            for lora in plan.load:
                await self.client.load_lora_adapter(lora, self.catalog.resolve(lora).path)
                self._known.add(lora)
            for lora in plan.unload:
                await self.client.unload_lora_adapter(lora)
                self._known.discard(lora)
        return {"serving": serving and serving.lora_name, "loaded": plan.load, "unloaded": plan.unload,
                "vllm": "ok"}

    async def preload(self, version: AdapterVersion) -> str:
        """Load ``version`` before the alias moves to it. A vLLM that is not reachable is reported in the return
        value (it serves the registry's versions when it starts); one that refuses the adapter raises, so the
        caller does not promote a version vLLM cannot serve."""
        try:
            loaded = await self.ensure_loaded(version.lora_name, version.path, refresh=True)
        except PubmindError as e:
            if e.status == 503:
                return f"vLLM not reachable ({e.message})"
            raise
        return "loaded" if loaded else "already loaded"

    async def unload_unless_kept(self, name: str, lora_name: str) -> dict[str, Any]:
        """After a rejected candidate: unload it unless it is one of the versions kept loaded."""
        if lora_name in kept_versions(self.catalog, name, self.keep_loaded):
            return {"unloaded": []}
        try:
            return {"unloaded": [lora_name] if await self.unload(lora_name) else []}
        except PubmindError as e:
            return {"unloaded": [], "vllm": f"not reachable ({e.message})"}


def run_with_deployer(settings: Settings, catalog: AdapterCatalog,
                      work: Callable[[AdapterDeployer], Awaitable[T]]) -> T:
    """For a synchronous process (the re-tune job, the CLI): a client and deployer for ``settings.llm``, one
    ``work(deployer)`` coroutine run to completion, the client closed."""

    async def main() -> T:
        client = VllmClient.from_settings(settings.llm)
        try:
            return await work(AdapterDeployer(client, catalog, keep_loaded=settings.finetune.keep_loaded))
        finally:
            await client.aclose()

    return asyncio.run(main())
