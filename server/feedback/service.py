"""``FeedbackService``: curator corrections (validated against the corpus, with the corrected answer's
provenance copied in), listing and review. Only accepted corrections are trained on."""

from __future__ import annotations

import anyio

from finetune.dataset import validate_correction
from finetune.store import AnswerStore, Correction, CorrectionStore
from pubmind.audit import AuditEntry, AuditLog
from pubmind.errors import Forbidden, InvalidInput
from pubmind.settings import Settings
from retrieval.store import CorpusStore
from server.auth import Principal
from server.feedback.protocol import FeedbackIn, FeedbackList, Status

REVIEW_ACTIONS = {"accepted": "correction.accept", "rejected": "correction.reject", "pending": "correction.edit"}


class FeedbackService:
    def __init__(self, *, settings: Settings, corrections: CorrectionStore, answers: AnswerStore,
                 corpus: CorpusStore, audit: AuditLog) -> None:
        self.settings, self.corrections, self.answers, self.corpus = settings, corrections, answers, corpus
        self.audit = audit

    def _submit(self, data: FeedbackIn, by: Principal) -> Correction:
        answer = None if data.answer_id is None else self.answers.get(data.answer_id)
        question = data.question
        if question is None:
            if answer is None:
                raise InvalidInput("question is required when answer_id is not given", param="question")
            question = answer.question
        q, corrected, pmids = validate_correction(
            self.corpus, question=question, corrected_answer=data.corrected_answer, pmids=data.pmids,
            rating=data.rating, note=data.note, max_question_chars=self.settings.server.max_question_chars)
        c = self.corrections.add(question=q, corrected_answer=corrected, pmids=pmids, curator=by.name,
                                 answer=answer, rating=data.rating, note=data.note, source="api")
        self.audit.record("correction.submit", c.id, by.actor,
                          after={"status": c.status, "answer_id": c.answer_id, "pmids": c.pmids})
        return c

    async def submit(self, data: FeedbackIn, *, by: Principal) -> Correction:
        return await anyio.to_thread.run_sync(self._submit, data, by)

    async def find(self, status: Status | None, *, limit: int, offset: int) -> FeedbackList:
        items = await anyio.to_thread.run_sync(lambda: self.corrections.find(status, limit=limit, offset=offset))
        return FeedbackList(data=items, count=len(items))

    async def get(self, correction_id: str) -> Correction:
        return await anyio.to_thread.run_sync(self.corrections.get, correction_id)

    def _review(self, correction_id: str, status: Status, by: Principal) -> Correction:
        current = self.corrections.get(correction_id)
        if current.curator == by.name and not self.settings.server.curators_review_own:
            raise Forbidden(f"{by.name!r} wrote correction {correction_id}; another curator must review it "
                            f"(settings: server.curators_review_own)", param="feedback_id")
        before = current.status
        c = self.corrections.set_status(correction_id, status, by.name)
        self.audit.record(REVIEW_ACTIONS[status], correction_id, by.actor, before={"status": before},
                          after={"status": status, "reviewer": by.name})
        return c

    async def review(self, correction_id: str, status: Status, *, by: Principal) -> Correction:
        return await anyio.to_thread.run_sync(self._review, correction_id, status, by)

    async def history(self, correction_id: str) -> list[AuditEntry]:
        """Every change of a correction (submitted, each review), oldest first, from the audit trail."""
        await self.get(correction_id)  # NotFound for an unknown id
        rows = await anyio.to_thread.run_sync(lambda: self.audit.query(target=correction_id, action="correction."))
        return rows[::-1]
