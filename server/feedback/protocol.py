"""Wire format of ``/v1/feedback`` (curator corrections)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from finetune.store import Correction
from server.system.protocol import MAX_PMID

Status = Literal["accepted", "rejected", "pending"]
MAX_OFFSET = 10**9


class FeedbackIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    corrected_answer: Annotated[str, msgspec.Meta(
        max_length=20_000, description="The answer as it should have been, citing evidence as [PMID:n].")]
    answer_id: Annotated[str, msgspec.Meta(
        max_length=64, description="id of the served answer being corrected (from /v1/query); omit for a "
        "question written from scratch.")] | None = None
    question: Annotated[str | None, msgspec.Meta(
        description="The question (default: the question of answer_id).")] = None
    pmids: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=MAX_PMID)]], msgspec.Meta(
        max_length=100, description="PMIDs that answer the question.")] = msgspec.field(default_factory=list)
    rating: Annotated[int | None, msgspec.Meta(description="Rating of the original answer, 1 (bad) to 5.")] = None
    note: Annotated[str, msgspec.Meta(max_length=5_000)] = ""


class StatusIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    status: Status


class FeedbackList(msgspec.Struct, kw_only=True):
    data: list[Correction]
    count: int
