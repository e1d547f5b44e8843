"""Curator corrections: ``POST /v1/feedback``, ``GET /v1/feedback[?status=]``, ``GET /v1/feedback/{id}``,
``PATCH /v1/feedback/{id}`` (accept/reject). Curator or admin keys only; only accepted corrections are
trained on (``POST /v1/retune``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
import msgspec
from litestar import Request, Router, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from finetune.dataset import validate_correction
from finetune.store import AnswerStore, Correction, CorrectionStore
from pubmind.errors import InvalidInput
from pubmind.settings import Settings
from server.auth import require_role
from server.resources import Resources


class FeedbackIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    corrected_answer: Annotated[str, msgspec.Meta(
        description="The answer as it should have been, citing evidence as [PMID:n].")]
    answer_id: Annotated[str | None, msgspec.Meta(
        description="id of the served answer being corrected (from /v1/query); omit for a question written "
        "from scratch.")] = None
    question: Annotated[str | None, msgspec.Meta(
        description="The question (default: the question of answer_id).")] = None
    pmids: Annotated[list[int], msgspec.Meta(description="PMIDs that answer the question.")] = msgspec.field(
        default_factory=list)
    rating: Annotated[int | None, msgspec.Meta(description="Rating of the original answer, 1 (bad) to 5.")] = None
    note: str = ""


class StatusIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    status: Literal["accepted", "rejected", "pending"]


class FeedbackList(msgspec.Struct, kw_only=True):
    data: list[Correction]
    count: int


@post("/", status_code=201, summary="Submit a correction of an answer (or a curated question/answer)")
async def create(request: Request[Any, Any, Any], data: JSONBody[FeedbackIn], settings: NamedDependency[Settings],
                 correction_store: NamedDependency[CorrectionStore], answer_store: NamedDependency[AnswerStore],
                 resources: NamedDependency[Resources]) -> Correction:
    def work() -> Correction:
        answer = None if data.answer_id is None else answer_store.get(data.answer_id)
        question = data.question
        if question is None:
            if answer is None:
                raise InvalidInput("question is required when answer_id is not given", param="question")
            question = answer.question
        q, corrected, pmids = validate_correction(
            resources.store, question=question, corrected_answer=data.corrected_answer, pmids=data.pmids,
            rating=data.rating, note=data.note, max_question_chars=settings.server.max_question_chars)
        return correction_store.add(question=q, corrected_answer=corrected, pmids=pmids, curator=request.user.name,
                                    answer=answer, rating=data.rating, note=data.note, source="api")

    return await anyio.to_thread.run_sync(work)


@get("/", summary="List corrections, oldest first (filter by status)")
async def list_feedback(correction_store: NamedDependency[CorrectionStore],
                        status: Annotated[str | None, QueryParameter()] = None,
                        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
                        offset: Annotated[int, QueryParameter(ge=0)] = 0) -> FeedbackList:
    items = await anyio.to_thread.run_sync(lambda: correction_store.find(status, limit=limit, offset=offset))
    return FeedbackList(data=items, count=len(items))


@get("/{feedback_id:str}", summary="One correction with its provenance")
async def get_one(feedback_id: FromPath[str], correction_store: NamedDependency[CorrectionStore]) -> Correction:
    return await anyio.to_thread.run_sync(correction_store.get, feedback_id)


@patch("/{feedback_id:str}", summary="Accept or reject a correction (only accepted ones are trained on)")
async def set_status(request: Request[Any, Any, Any], feedback_id: FromPath[str], data: JSONBody[StatusIn],
                     correction_store: NamedDependency[CorrectionStore]) -> Correction:
    return await anyio.to_thread.run_sync(correction_store.set_status, feedback_id, data.status, request.user.name)


router = Router("/v1/feedback", route_handlers=[create, list_feedback, get_one, set_status],
                guards=[require_role("curator")], tags=["feedback"])
