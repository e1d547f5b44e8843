"""Re-tuning: ``POST /v1/retune`` (202, starts a job process), ``GET /v1/retune`` (all jobs),
``GET /v1/retune/{job_id}`` (status, progress, new version, evaluation, promoted), ``DELETE
/v1/retune/{job_id}`` (cancel: kills the job process). Admin keys only."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from server.auth import Principal, require_role
from server.retune.protocol import JobList, RetuneIn, Started
from server.retune.service import RetuneService


@post("/", status_code=202, summary="Start a re-tune job on the accepted corrections")
async def start(request: Request[Principal, Any, Any], data: JSONBody[RetuneIn],
                retune_service: NamedDependency[RetuneService]) -> Started:
    return await retune_service.start(data, by=request.user)


@get("/", summary="Re-tune jobs, oldest first")
async def list_jobs(retune_service: NamedDependency[RetuneService],
                    adapter: Annotated[str | None, QueryParameter(max_length=64)] = None) -> JobList:
    return await retune_service.find(adapter)


@get("/{job_id:str}", summary="A job: status, progress (step, loss), new version, evaluation, promoted")
async def get_job(job_id: FromPath[str], retune_service: NamedDependency[RetuneService]) -> dict[str, Any]:
    return await retune_service.get(job_id)


@delete("/{job_id:str}", status_code=200, summary="Cancel a job (kills its process; the served adapter is unchanged)")
async def cancel(request: Request[Principal, Any, Any], job_id: FromPath[str],
                 retune_service: NamedDependency[RetuneService]) -> dict[str, Any]:
    return await retune_service.cancel(job_id, by=request.user)


router = Router("/v1/retune", route_handlers=[start, list_jobs, get_job, cancel], guards=[require_role("admin")],
                tags=["retune"])
