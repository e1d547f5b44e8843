"""finetune.ratings.RatingStore: ratings, asks, the review log and the curators' queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from finetune.ratings import RatingStore
from finetune.store import AnswerStore, CorrectionStore
from pubmind.errors import InvalidInput, NotFound


@pytest.fixture()
def stores(settings: Any) -> Iterator[tuple[AnswerStore, CorrectionStore, RatingStore]]:
    answers, corrections = AnswerStore(settings.app_db), CorrectionStore(settings.app_db)
    ratings = RatingStore(settings.app_db)
    yield answers, corrections, ratings
    for s in (ratings, corrections, answers):
        s.close()


def record(answers: AnswerStore, question: str = "Q?", supported: bool = True) -> str:
    return answers.record(question, "A [PMID:1]", "base", None, "v1", [(1, 0.9)],
                          [{"pmid": 1, "supported": supported}], {"total": 5.0})


def test_down_rated_answer_is_queued(stores: Any) -> None:
    answers, _, ratings = stores
    aid = record(answers)
    ratings.rate(aid, "reader", -1, "wrong")
    assert [(i.kind, i.id, i.detail) for i in ratings.queue(("down",))] == [("down", aid, "wrong")]


def test_up_rated_answer_is_not_queued(stores: Any) -> None:
    answers, _, ratings = stores
    ratings.rate(record(answers), "reader", 1)
    assert ratings.queue(("down",)) == []


def test_rerating_replaces_the_rating(stores: Any) -> None:
    answers, _, ratings = stores
    aid = record(answers)
    ratings.rate(aid, "reader", -1)
    ratings.rate(aid, "reader", 1)
    assert [r.value for r in ratings.ratings(aid)] == [1]


def test_unsupported_answer_is_queued(stores: Any) -> None:
    answers, _, ratings = stores
    aid = record(answers, supported=False)
    assert [i.id for i in ratings.queue(("unsupported",))] == [aid]


def test_pending_correction_is_queued_and_marks_the_answer_corrected(stores: Any) -> None:
    answers, corrections, ratings = stores
    aid = record(answers, supported=False)
    fb = corrections.add(question="Q?", corrected_answer="A", pmids=[1], curator="c", answer=answers.get(aid))
    items = {i.kind: i for i in ratings.queue()}
    assert items["pending"].id == fb.id
    assert items["unsupported"].corrected is True


def test_queue_filters_on_question_text(stores: Any) -> None:
    answers, _, ratings = stores
    record(answers, "About statins?", supported=False)
    record(answers, "About aspirin?", supported=False)
    assert [i.question for i in ratings.queue(text="aspirin")] == ["About aspirin?"]


def test_rating_an_unknown_answer_is_not_found(stores: Any) -> None:
    _, _, ratings = stores
    with pytest.raises(NotFound):
        ratings.rate("ans_nope", "reader", -1)


def test_bad_rating_value_names_the_parameter(stores: Any) -> None:
    answers, _, ratings = stores
    with pytest.raises(InvalidInput) as e:
        ratings.rate(record(answers), "reader", 5)
    assert e.value.param == "rating"


def test_asks_by_lists_newest_first(stores: Any) -> None:
    answers, _, ratings = stores
    a1, a2 = record(answers, "first?"), record(answers, "second?")
    ratings.record_ask(a1, "r", "first?", "base", [])
    ratings.record_ask(a2, "r", "second?", "base", [{"pmid": 1}])
    ratings.record_ask(record(answers), "someone-else", "third?", "base", [])
    assert [a.question for a in ratings.asks_by("r")] == ["second?", "first?"]


def test_review_log_keeps_every_review(stores: Any) -> None:
    _, _, ratings = stores
    ratings.add_review("fb_1", "b", "rejected", "no")
    ratings.add_review("fb_1", "c", "accepted", "yes")
    assert [(r.reviewer, r.status) for r in ratings.reviews("fb_1")] == [("b", "rejected"), ("c", "accepted")]
