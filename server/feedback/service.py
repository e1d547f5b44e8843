"""``FeedbackService``: curator corrections (validated against the corpus, with the corrected answer's
provenance copied in), listing and review. Only accepted corrections are trained on."""

from __future__ import annotations

import anyio

from finetune.dataset import validate_correction
from finetune.store import AnswerStore, Correction, CorrectionStore
from pubmind.errors import InvalidInput
from pubmind.settings import Settings
from retrieval.store import CorpusStore
from server.feedback.protocol import FeedbackIn, FeedbackList, Status


class FeedbackService:
    def __init__(self, *, settings: Settings, corrections: CorrectionStore, answers: AnswerStore,
                 corpus: CorpusStore) -> None:
        self.settings, self.corrections, self.answers, self.corpus = settings, corrections, answers, corpus

    def _submit(self, data: FeedbackIn, curator: str) -> Correction:
        answer = None if data.answer_id is None else self.answers.get(data.answer_id)
        question = data.question
        if question is None:
            if answer is None:
                raise InvalidInput("question is required when answer_id is not given", param="question")
            question = answer.question
        q, corrected, pmids = validate_correction(
            self.corpus, question=question, corrected_answer=data.corrected_answer, pmids=data.pmids,
            rating=data.rating, note=data.note, max_question_chars=self.settings.server.max_question_chars)
        return self.corrections.add(question=q, corrected_answer=corrected, pmids=pmids, curator=curator,
                                    answer=answer, rating=data.rating, note=data.note, source="api")

    async def submit(self, data: FeedbackIn, *, curator: str) -> Correction:
        return await anyio.to_thread.run_sync(self._submit, data, curator)

    async def find(self, status: Status | None, *, limit: int, offset: int) -> FeedbackList:
        items = await anyio.to_thread.run_sync(lambda: self.corrections.find(status, limit=limit, offset=offset))
        return FeedbackList(data=items, count=len(items))

    async def get(self, correction_id: str) -> Correction:
        return await anyio.to_thread.run_sync(self.corrections.get, correction_id)

    async def review(self, correction_id: str, status: Status, *, reviewer: str) -> Correction:
        return await anyio.to_thread.run_sync(self.corrections.set_status, correction_id, status, reviewer)
