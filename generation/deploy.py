"""The one adapter deployer: keeps the running vLLM in line with the adapter registry.

Plan (what to load, what to unload), load, unload and verify, over the async vLLM client. The API server
(promotion, rollback, on-demand loading of a requested version) and the re-tune job (preloading a candidate
before the alias moves, unloading a rejected one) both call it; a synchronous process runs it with
``run_with_deployer`` (``asyncio.run``).

Adapters are served under ``NAME@vN`` (never a same-name reload); the registry's alias ``NAME`` says which
version is current, and the ``keep_loaded`` most recently current versions of each name stay loaded. Promotion
and rollback load the target version first and move the alias only once vLLM has accepted it (a load vLLM
refuses leaves the alias where it was; a failed alias move unloads what was loaded for it). At most
``max_loaded`` adapter versions are loaded at once: loading one more unloads the least recently used version
that is no adapter's current one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from generation.vllm_client import VllmClient, make_client
from pubmind.errors import Conflict, NotFound, PubmindError
from pubmind.settings import Settings

T = TypeVar("T")
log = logging.getLogger("pubmind.deploy")


class AdapterVersion(Protocol):
    """What the deployer needs of a registry version (``finetune.registry.AdapterVersion``)."""

    @property
    def version(self) -> int: ...

    @property
    def lora_name(self) -> str: ...  # NAME@vN

    @property
    def path(self) -> str: ...  # the adapter folder vLLM loads


class AdapterCatalog(Protocol):
    """What the deployer needs of the registry (``finetune.registry.AdapterRegistry``)."""

    def current(self, name: str) -> AdapterVersion | None: ...

    def recent(self, name: str, n: int) -> list[int]: ...  # version numbers, most recently current first

    def resolve(self, model: str, *, any_version: bool = False) -> AdapterVersion: ...  # NAME or NAME@vN

    def get(self, name: str, version: int) -> AdapterVersion: ...

    def promote(self, name: str, version: int, *, by: str = "", reason: str = "") -> AdapterVersion: ...

    def rollback_target(self, name: str) -> AdapterVersion: ...

    def rollback(self, name: str, *, by: str = "", reason: str = "", to: int | None = None) -> AdapterVersion: ...


ServedReport = dict[str, str | list[str] | None]  # {"serving", "loaded", "unloaded", "vllm", ...}


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


def lora_adapter_name(lora_name: str) -> str | None:
    """``NAME@vN`` -> ``NAME``; None for names that are no adapter version (the base model)."""
    name, sep, version = lora_name.rpartition("@v")
    return name if sep and name and version.isdigit() else None


class AdapterDeployer:
    """Loads and unloads adapter versions in one vLLM server, serialised by one lock."""

    def __init__(self, client: VllmClient, catalog: AdapterCatalog, *, keep_loaded: int, max_loaded: int = 8) -> None:
        if keep_loaded < 1 or max_loaded < 1:
            raise ValueError(f"keep_loaded and max_loaded must be >= 1, got {keep_loaded}, {max_loaded}")
        self.client, self.catalog = client, catalog
        self.keep_loaded, self.max_loaded = keep_loaded, max_loaded
        self._lock = asyncio.Lock()
        self._known: set[str] = set()  # lora names vLLM was last seen serving
        self._last_used: dict[str, float] = {}  # lora name -> monotonic time of its last ensure_loaded

    @classmethod
    def from_settings(cls, client: VllmClient, catalog: AdapterCatalog, settings: Settings) -> AdapterDeployer:
        return cls(client, catalog, keep_loaded=settings.finetune.keep_loaded,
                   max_loaded=settings.llm.max_loaded_adapters)

    async def loaded(self) -> set[str]:
        """The model names vLLM serves now (base and adapters); raises ServiceUnavailable when unreachable."""
        self._known = set(await self.client.models())
        return set(self._known)

    async def ensure_loaded(self, lora_name: str, path: str, *, refresh: bool = False) -> bool:
        """Load ``lora_name`` from ``path`` unless vLLM already serves it; True when it was loaded now.
        ``refresh`` asks vLLM again instead of trusting the last answer (after a vLLM restart)."""
        self._last_used[lora_name] = time.monotonic()
        if lora_name in self._known and not refresh:
            return False
        async with self._lock:
            if lora_name in await self.loaded():
                return False
            await self._load(lora_name, path)
            return True

    async def _load(self, lora_name: str, path: str) -> None:
        """Load under the lock, first making room when ``max_loaded`` versions are loaded already."""
        adapters = {x for x in self._known if lora_adapter_name(x)}
        if len(adapters) >= self.max_loaded:
            current = set()
            for x in adapters:
                name = lora_adapter_name(x)
                try:
                    cur = self.catalog.current(name) if name else None
                except PubmindError:
                    cur = None  # an adapter no longer in the registry: evictable
                if cur is not None:
                    current.add(cur.lora_name)
            evictable = sorted(adapters - current, key=lambda x: self._last_used.get(x, 0.0))
            if not evictable:
                raise Conflict(f"cannot load {lora_name!r}: all {len(adapters)} adapter slots "
                               f"(llm.max_loaded_adapters={self.max_loaded}) hold current versions", param="model")
            for x in evictable[:len(adapters) - self.max_loaded + 1]:
                await self.client.unload_lora_adapter(x)
                self._known.discard(x)
        await self.client.load_lora_adapter(lora_name, path)
        self._known.add(lora_name)

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

    async def deploy(self, name: str) -> ServedReport:
        """Load the current version of ``name`` and unload its versions beyond ``keep_loaded``. When vLLM is not
        reachable the registry change still stands (a restarted vLLM loads the current versions); the result
        says so."""
        serving = self.catalog.current(name)
        try:
            loaded = await self.loaded()
        except PubmindError as e:
            return {"serving": serving.lora_name if serving else None,
                    "vllm": f"not reachable ({e.message}); served from the registry when vLLM (re)starts"}
        plan = plan_deploy(self.catalog, name, self.keep_loaded, loaded)
        async with self._lock:
            for lora in plan.unload:
                await self.client.unload_lora_adapter(lora)
                self._known.discard(lora)
            for lora in plan.load:
                await self._load(lora, self.catalog.resolve(lora).path)
        return {"serving": serving.lora_name if serving else None, "loaded": plan.load, "unloaded": plan.unload,
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

    async def promote(self, name: str, version: int, *, by: str = "", reason: str = "") -> ServedReport:
        """Serve ``version`` of ``name``: load it, then move the alias, then unload versions beyond
        ``keep_loaded``. vLLM refusing the adapter leaves the alias unchanged (the error propagates); a failed
        alias move unloads the version loaded for it."""
        target = await asyncio.to_thread(self.catalog.get, name, version)
        return await self.switch(target, lambda: self.catalog.promote(name, version, by=by, reason=reason))

    async def rollback(self, name: str, *, by: str = "", reason: str = "rollback") -> ServedReport:
        """Serve the previously current version of ``name`` again, loading it before the alias moves back."""
        target = await asyncio.to_thread(self.catalog.rollback_target, name)
        return await self.switch(target, lambda: self.catalog.rollback(name, by=by, reason=reason,
                                                                         to=target.version))

    async def switch(self, target: AdapterVersion, move_alias: Callable[[], AdapterVersion]) -> ServedReport:
        """Load ``target``, then ``move_alias()`` (in a thread; it makes ``target`` current), then ``deploy``.
        If the move fails, what was loaded for it is unloaded again and the error propagates."""
        preload = await self.preload(target)
        try:
            current = await asyncio.to_thread(move_alias)
        except BaseException:
            if preload == "loaded":  # undo: nothing may stay loaded for an alias that did not move
                try:
                    await self.unload(target.lora_name)
                except PubmindError as e:
                    log.error("could not unload %s after the alias move failed: %s", target.lora_name, e.message)
            raise
        name = lora_adapter_name(current.lora_name) or current.lora_name
        return {**await self.deploy(name), "current": current.lora_name, "preload": preload}

    async def unload_unless_kept(self, name: str, lora_name: str) -> ServedReport:
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
        async with make_client(settings) as client:
            return await work(AdapterDeployer.from_settings(client, catalog, settings))

    return asyncio.run(main())
