"""``AdapterService``: adapter versions (a reader's view or an admin's full record), promotion and rollback.
The registry's alias is the source of truth (a restart serves it again); ``AdapterDeployer`` brings the
running vLLM in line (loads ``NAME@vN``, unloads versions beyond ``finetune.keep_loaded``)."""

from __future__ import annotations

from typing import Any

import anyio

from finetune.evaluate import METRICS
from finetune.registry import AdapterRegistry, AdapterVersion
from generation.deploy import AdapterDeployer
from pubmind.audit import AuditLog
from server.adapters.protocol import AdapterList, AdapterRecords, AdapterView, Promoted, VersionView
from server.auth import Principal


def headline_metrics(manifest: dict[str, Any]) -> dict[str, float]:
    """The gate's held-out metrics of a version (numbers only; no samples, paths or datasets)."""
    evaluation = manifest.get("evaluation") or {}
    scores = evaluation.get("candidate_metrics") or {}
    return {m: float(scores[m]) for m in METRICS if isinstance(scores.get(m), int | float)}


def version_view(v: AdapterVersion) -> VersionView:
    created = v.manifest.get("created_at")
    promoted = (v.manifest.get("evaluation") or {}).get("promote")
    return VersionView(version=v.version, lora_name=v.lora_name, current=v.current,
                       created_at=float(created) if isinstance(created, int | float) else None,
                       promoted_by_gate=promoted if isinstance(promoted, bool) else None,
                       metrics=headline_metrics(v.manifest))


class AdapterService:
    def __init__(self, registry: AdapterRegistry, deployer: AdapterDeployer, audit: AuditLog) -> None:
        self.registry, self.deployer, self.audit = registry, deployer, audit

    def _current(self, name: str) -> int | None:
        v = self.registry.current(name) if name in self.registry.names() else None
        return v.version if v else None

    def _views(self) -> list[AdapterView]:
        out = []
        for name in self.registry.names():
            versions = self.registry.versions(name)
            cur = next((v for v in versions if v.current), None)
            out.append(AdapterView(name=name, current=cur.version if cur else None,
                                   current_lora_name=cur.lora_name if cur else None,
                                   versions=[version_view(v) for v in versions]))
        return out

    async def list(self, *, detail: bool) -> AdapterList | AdapterRecords:
        if detail:
            return AdapterRecords(data=await anyio.to_thread.run_sync(self.registry.summary))
        return AdapterList(data=await anyio.to_thread.run_sync(self._views))

    async def promote(self, name: str, version: int, *, by: Principal) -> Promoted:
        """Load ``NAME@vN`` into vLLM first, then move the alias (undone if vLLM refuses it)."""
        before = await anyio.to_thread.run_sync(self._current, name)
        served = await self.deployer.promote(name, version, by=by.name, reason="manual promotion")
        return await self._done("adapter.promote", name, before, served, by)

    async def rollback(self, name: str, *, by: Principal) -> Promoted:
        before = await anyio.to_thread.run_sync(self._current, name)
        served = await self.deployer.rollback(name, by=by.name, reason="rollback")
        return await self._done("adapter.rollback", name, before, served, by)

    async def _done(self, action: str, name: str, before: int | None, served: Any, by: Principal) -> Promoted:
        v = await anyio.to_thread.run_sync(self.registry.current, name)
        assert v is not None, name
        await anyio.to_thread.run_sync(lambda: self.audit.record(action, name, by.actor, before={"current": before},
                                                                 after={"current": v.version}))
        return Promoted(adapter=name, current=v.version, lora_name=v.lora_name, served=served)
