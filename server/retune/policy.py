"""Re-tune policies: the server starts a re-tune of an adapter by itself when ``after_corrections`` corrections
have been accepted since its last job, or when its last job is ``every_days`` old (and at least one correction
was accepted since). The evaluation gate still decides what is promoted.

A policy comes from ``settings.finetune.policies`` or is set in the workbench (table ``retune_policies`` of the
app database, which overrides the settings' one for that adapter). ``PolicyService.run`` is the server's
background loop (started in the lifespan, one check every ``finetune.policy_check_seconds``, at most one job
started per adapter and check, cancelled at shutdown). A job it starts is recorded like any other: through
``RetuneService`` (audit ``retune.start``), with the actor ``system:policy``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec

from finetune.registry import check_name
from finetune.store import ACTIVE_JOB_STATUSES, CorrectionStore, Job, JobStore
from pubmind.durable import connect, immediate
from pubmind.errors import PubmindError
from pubmind.settings import RetunePolicy, Settings
from server.auth import Principal
from server.retune.protocol import RetuneIn
from server.retune.service import RetuneService

log = logging.getLogger("pubmind.policy")

POLICY_ACTOR = Principal("policy", "admin", key_id="system:policy")
DAY_S = 86400.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS retune_policies (
    adapter TEXT PRIMARY KEY,
    after_corrections INTEGER,
    every_days REAL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL
);
"""


class PolicyView(msgspec.Struct, kw_only=True):
    adapter: str
    after_corrections: int | None
    every_days: float | None
    source: str  # "settings" or "workbench:<key name>"
    last_check: dict[str, object] = msgspec.field(default_factory=dict)  # {"at", "started" | "waiting" | "error"}


def policy_due(policy: RetunePolicy, *, accepted_at: Sequence[float], last_job_at: float | None, active: bool,
               now: float) -> str | None:
    """Why a job should start now (None: not due). ``accepted_at``: review times (unix s) of accepted
    corrections; ``last_job_at``: creation time of the adapter's last job (None: never); ``active``: a job of the
    adapter is queued or running."""
    if active:
        return None
    new = sum(1 for t in accepted_at if last_job_at is None or t > last_job_at)
    if new == 0:
        return None
    if policy.after_corrections is not None and new >= policy.after_corrections:
        return f"{new} corrections accepted since the last job (policy: {policy.after_corrections})"
    if policy.every_days is not None and (last_job_at is None or now - last_job_at >= policy.every_days * DAY_S):
        age = "no job yet" if last_job_at is None else f"last job {(now - last_job_at) / DAY_S:.1f} days ago"
        return f"{age} (policy: every {policy.every_days:g} days) and {new} new accepted corrections"
    return None


class PolicyStore:
    """Policies set in the workbench (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path, schema=_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def all(self) -> dict[str, tuple[RetunePolicy, str]]:
        with self._lock:
            rows = self._db.execute("SELECT adapter, after_corrections, every_days, updated_by FROM retune_policies"
                                    ).fetchall()
        return {r[0]: (RetunePolicy(after_corrections=r[1], every_days=r[2]), r[3]) for r in rows}

    def set(self, adapter: str, policy: RetunePolicy, by: str) -> None:
        with immediate(self._db, self._lock) as db:
            db.execute("INSERT INTO retune_policies VALUES (?,?,?,?,?) ON CONFLICT(adapter) DO UPDATE SET "
                       "after_corrections=excluded.after_corrections, every_days=excluded.every_days, "
                       "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
                       (adapter, policy.after_corrections, policy.every_days, time.time(), by))


class PolicyService:
    def __init__(self, settings: Settings, store: PolicyStore, retune: RetuneService, jobs: JobStore,
                 corrections: CorrectionStore) -> None:
        self.settings, self.store, self.retune, self.jobs, self.corrections = settings, store, retune, jobs, corrections
        self.last: dict[str, dict[str, object]] = {}  # adapter -> outcome of its last check

    def policies(self) -> dict[str, tuple[RetunePolicy, str]]:
        """adapter -> (policy, source); the workbench's override the settings'."""
        out = {name: (p, "settings") for name, p in self.settings.finetune.policies.items()}
        out.update({name: (p, f"workbench:{by}") for name, (p, by) in self.store.all().items()})
        return out

    def views(self) -> list[PolicyView]:
        return [PolicyView(adapter=name, after_corrections=p.after_corrections, every_days=p.every_days, source=src,
                           last_check=self.last.get(name, {}))
                for name, (p, src) in sorted(self.policies().items())]

    def set(self, adapter: str, policy: RetunePolicy, by: Principal) -> None:
        check_name(adapter)
        self.store.set(adapter, policy, by.name)

    def check(self, now: float | None = None) -> list[str]:
        """One pass over the policies: start each due job; returns the ids of the jobs started."""
        now = time.time() if now is None else now
        policies = self.policies()
        if not policies:
            return []
        accepted = [c.reviewed_at or c.created_at for c in self.corrections.accepted()]
        started = []
        for adapter, (policy, _) in sorted(policies.items()):
            jobs: list[Job] = self.jobs.find(adapter=adapter)
            active = any(j.status in ACTIVE_JOB_STATUSES for j in jobs)
            last_at = max((j.created_at for j in jobs), default=None)
            reason = policy_due(policy, accepted_at=accepted, last_job_at=last_at, active=active, now=now)
            if reason is None:
                self.last[adapter] = {"at": now, "waiting": "not due" if not active else "a job is running"}
                continue
            try:
                job = self.retune._start(RetuneIn(adapter=adapter), POLICY_ACTOR)
            except (PubmindError, sqlite3.Error) as e:  # e.g. fewer accepted corrections than min_examples
                msg = getattr(e, "message", None) or str(e)
                self.last[adapter] = {"at": now, "error": msg}
                log.warning("re-tune policy of %s is due (%s) but the job did not start: %s", adapter, reason, msg)
                continue
            self.last[adapter] = {"at": now, "started": job.job_id, "reason": reason}
            log.info("re-tune policy started job %s for %s: %s", job.job_id, adapter, reason)
            started.append(job.job_id)
        return started

    async def run(self) -> None:
        """The background loop (cancel it to stop): a check every ``finetune.policy_check_seconds``."""
        while True:
            await anyio.sleep(self.settings.finetune.policy_check_seconds)
            try:
                await anyio.to_thread.run_sync(self.check)
            except Exception:  # a failed check is logged and retried at the next interval
                log.exception("re-tune policy check failed")
