"""Re-tuning: ``POST /v1/retune`` (202, starts a job process), ``GET /v1/retune`` (all jobs),
``GET /v1/retune/{job_id}`` (status, progress, new version, evaluation, promoted), ``DELETE
/v1/retune/{job_id}`` (cancel: kills the job process). Admin keys only."""

from __future__ import annotations

import threading
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, Router, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from finetune.jobs import JobRunner, job_view
from finetune.store import CorrectionStore, JobStore
from pubmind.settings import Settings
from server.auth import require_role

_lock = threading.Lock()


def job_runner(state: State, settings: Settings, jobs: JobStore, corrections: CorrectionStore) -> JobRunner:
    """The app's JobRunner (created on first use; jobs interrupted by a restart are marked failed then)."""
    with _lock:
        runner = getattr(state, "retune_runner", None)
        if runner is None or runner.jobs is not jobs:
            runner = JobRunner(settings, jobs, corrections)
            runner.recover()
            state.retune_runner = runner
        return runner


class RetuneIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    adapter: Annotated[str, msgspec.Meta(description="Adapter name; the job creates its next version NAME@vN.")]
    hyperparameters: Annotated[dict[str, Any], msgspec.Meta(
        description="Overrides of settings.finetune: lora_r, lora_alpha, lora_dropout, target_modules, epochs, "
        "learning_rate, batch_size, max_seq_len, distractors, heldout_fraction, seed.")] = msgspec.field(
        default_factory=dict)
    min_examples: Annotated[int | None, msgspec.Meta(
        description="Accepted corrections needed (default settings.finetune.min_examples).")] = None
    evaluation: Annotated[dict[str, Any], msgspec.Meta(
        description="Gate options: {'pubmedqa_path': ori_pqal.json on the server, 'pubmedqa_limit': 50, "
        "'train_sample': trained-on corrections re-checked (default 20)}."
    )] = msgspec.field(default_factory=dict)


@post("/", status_code=202, summary="Start a re-tune job on the accepted corrections")
async def start(request: Request[Any, Any, Any], data: JSONBody[RetuneIn], settings: NamedDependency[Settings],
                job_store: NamedDependency[JobStore], correction_store: NamedDependency[CorrectionStore]) -> dict[str, Any]:
    runner = job_runner(request.app.state, settings, job_store, correction_store)
    job = await anyio.to_thread.run_sync(lambda: runner.submit(
        data.adapter, hyperparameters=data.hyperparameters, min_examples=data.min_examples,
        created_by=request.user.name, evaluation=data.evaluation))
    return {"job_id": job.id, "status": job.status, "adapter": job.adapter}


@get("/", summary="Re-tune jobs, oldest first")
async def list_jobs(request: Request[Any, Any, Any], settings: NamedDependency[Settings],
                    job_store: NamedDependency[JobStore], correction_store: NamedDependency[CorrectionStore],
                    adapter: Annotated[str | None, QueryParameter()] = None) -> dict[str, Any]:
    job_runner(request.app.state, settings, job_store, correction_store)  # recovers interrupted jobs on first use
    jobs = await anyio.to_thread.run_sync(lambda: job_store.find(adapter=adapter))
    return {"data": [job_view(j) for j in jobs]}


@get("/{job_id:str}", summary="A job: status, progress (step, loss), new version, evaluation, promoted")
async def get_job(request: Request[Any, Any, Any], job_id: FromPath[str], settings: NamedDependency[Settings],
                  job_store: NamedDependency[JobStore], correction_store: NamedDependency[CorrectionStore]) -> dict[str, Any]:
    runner = job_runner(request.app.state, settings, job_store, correction_store)
    return job_view(await anyio.to_thread.run_sync(runner.get, job_id))


@delete("/{job_id:str}", status_code=200, summary="Cancel a job (kills its process; the served adapter is unchanged)")
async def cancel(request: Request[Any, Any, Any], job_id: FromPath[str], settings: NamedDependency[Settings],
                 job_store: NamedDependency[JobStore], correction_store: NamedDependency[CorrectionStore]) -> dict[str, Any]:
    runner = job_runner(request.app.state, settings, job_store, correction_store)
    return job_view(await anyio.to_thread.run_sync(runner.cancel, job_id))


router = Router("/v1/retune", route_handlers=[start, list_jobs, get_job, cancel], guards=[require_role("admin")],
                tags=["retune"])
