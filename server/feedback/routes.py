"""Curator corrections: ``POST /v1/feedback``, ``GET /v1/feedback[?status=]``, ``GET /v1/feedback/{id}``,
``PATCH /v1/feedback/{id}`` (accept/reject). Curator or admin keys only; only accepted corrections are
trained on (``POST /v1/retune``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Router, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from finetune.store import Correction
from pubmind.audit import AuditEntry
from server.auth import Principal, require_role
from server.feedback.protocol import MAX_OFFSET, FeedbackIn, FeedbackList, Status, StatusIn
from server.feedback.service import FeedbackService

ID = Annotated[str, QueryParameter(max_length=64)]

@post("/", status_code=201, summary="Submit a correction of an answer (or a curated question/answer)")
async def create(request: Request[Principal, Any, Any], data: JSONBody[FeedbackIn],
                 feedback_service: NamedDependency[FeedbackService]) -> Correction:
    return await feedback_service.submit(data, by=request.user)

@get("/", summary="List corrections, oldest first (filter by status)")
async def list_feedback(feedback_service: NamedDependency[FeedbackService],
                        status: Annotated[Status | None, QueryParameter()] = None,
                        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
                        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0) -> FeedbackList:
    return await feedback_service.find(status, limit=limit, offset=offset)

@get("/{feedback_id:str}", summary="One correction with its provenance")
async def get_one(feedback_id: FromPath[str], feedback_service: NamedDependency[FeedbackService]) -> Correction:
    return await feedback_service.get(feedback_id)

@patch("/{feedback_id:str}", summary="Accept or reject a correction (only accepted ones are trained on)")
async def set_status(request: Request[Principal, Any, Any], feedback_id: FromPath[str], data: JSONBody[StatusIn],
                     feedback_service: NamedDependency[FeedbackService]) -> Correction:
    return await feedback_service.review(feedback_id, data.status, by=request.user)

@get("/{feedback_id:str}/history", summary="A correction's changes: submission and every review, oldest first")
async def history(feedback_id: FromPath[str], feedback_service: NamedDependency[FeedbackService]) -> list[AuditEntry]:
    return await feedback_service.history(feedback_id)

router = Router("/v1/feedback", route_handlers=[create, list_feedback, get_one, set_status, history],
                guards=[require_role("curator")], tags=["feedback"])
