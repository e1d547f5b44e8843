"""``RetuneService``: start, list, follow and cancel re-tune jobs through the app's one ``JobRunner`` (built
at start-up, when jobs cut off by a restart are marked failed)."""

from __future__ import annotations

from typing import Any

import anyio

from finetune.jobs import JobRunner, job_view
from finetune.store import JobStore
from server.retune.protocol import JobList, RetuneIn, Started


class RetuneService:
    def __init__(self, runner: JobRunner, jobs: JobStore) -> None:
        self.runner, self.jobs = runner, jobs

    async def start(self, data: RetuneIn, *, by: str) -> Started:
        job = await anyio.to_thread.run_sync(lambda: self.runner.submit(
            data.adapter, hyperparameters=data.hyperparameters, min_examples=data.min_examples, created_by=by,
            evaluation=data.evaluation))
        return Started(job_id=job.id, status=job.status, adapter=job.adapter)

    async def find(self, adapter: str | None) -> JobList:
        jobs = await anyio.to_thread.run_sync(lambda: self.jobs.find(adapter=adapter))
        return JobList(data=[job_view(j) for j in jobs])

    async def get(self, job_id: str) -> dict[str, Any]:
        return job_view(await anyio.to_thread.run_sync(self.runner.get, job_id))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return job_view(await anyio.to_thread.run_sync(self.runner.cancel, job_id))
