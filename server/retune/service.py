"""``RetuneService``: start, list, follow and cancel re-tune jobs through the app's one ``JobRunner`` (built
at start-up, when jobs cut off by a restart are marked failed)."""

from __future__ import annotations

from typing import Any

import anyio

from finetune.jobs import JobRunner, job_view
from finetune.store import JobStore
from pubmind.audit import AuditLog
from server.auth import Principal
from server.retune.protocol import JobList, RetuneIn, Started


class RetuneService:
    def __init__(self, runner: JobRunner, jobs: JobStore, audit: AuditLog) -> None:
        self.runner, self.jobs, self.audit = runner, jobs, audit

    def _start(self, data: RetuneIn, by: Principal) -> Started:
        job = self.runner.submit(data.adapter, hyperparameters=data.hyperparameters, min_examples=data.min_examples,
                                 created_by=by.name, evaluation=data.evaluation)
        self.audit.record("retune.start", job.id, by.actor,
                          after={"adapter": job.adapter, "hyperparameters": job.hyperparameters})
        return Started(job_id=job.id, status=job.status, adapter=job.adapter)

    async def start(self, data: RetuneIn, *, by: Principal) -> Started:
        return await anyio.to_thread.run_sync(self._start, data, by)

    async def find(self, adapter: str | None) -> JobList:
        jobs = await anyio.to_thread.run_sync(lambda: self.jobs.find(adapter=adapter))
        return JobList(data=[job_view(j) for j in jobs])

    async def get(self, job_id: str) -> dict[str, Any]:
        return job_view(await anyio.to_thread.run_sync(self.runner.get, job_id))

    def _cancel(self, job_id: str, by: Principal) -> dict[str, Any]:
        before = self.runner.get(job_id).status
        job = self.runner.cancel(job_id)
        self.audit.record("retune.cancel", job_id, by.actor, before={"status": before}, after={"status": job.status})
        return job_view(job)

    async def cancel(self, job_id: str, *, by: Principal) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._cancel, job_id, by)
