"""server.ui.views and server.ui.curate helpers: evidence cards (badges, authors, highlighting), form parsing,
who may review a correction."""

from __future__ import annotations

from typing import Any

import pytest

from finetune.store import Correction
from pubmind.errors import InvalidInput
from pubmind.records import Article, Author, CommentCorrection
from server.auth import Principal
from server.ui.curate import _may_review
from server.ui.views import evidence_cards, form_int, split_list

EV = {"pmid": 7, "title": "T", "journal": "J", "year": 2020, "url": "u", "snippet": "Statins lower LDL", "rank": 1,
      "in_prompt": True}


def card(article: Article, **kw: Any) -> dict[str, Any]:
    return evidence_cards([EV], {7: article}, kw.get("terms", []), kw.get("cited", {}), kw.get("numbers", {}))[0]


def test_retracted_article_gets_the_badge() -> None:
    art = Article(pmid=7, comments_corrections=(CommentCorrection("RetractionIn", 9),))
    assert card(art)["retracted"] is True


def test_erratum_gets_the_badge() -> None:
    art = Article(pmid=7, comments_corrections=(CommentCorrection("ErratumIn", 9),))
    assert card(art)["erratum"] is True


def test_first_three_authors_then_et_al() -> None:
    art = Article(pmid=7, authors=tuple(Author(last_name=n, initials="A") for n in ("Ab", "Cd", "Ef", "Gh")))
    assert card(art)["authors"].endswith("et al.")


def test_cited_card_has_its_marker_number() -> None:
    c = card(Article(pmid=7), cited={7: True}, numbers={7: 2})
    assert (c["cited"], c["number"]) == (True, 2)


def test_passage_highlights_query_terms() -> None:
    assert "<mark>Statins</mark>" in str(card(Article(pmid=7), terms=["statins"])["passage"])


def test_bad_year_names_the_field() -> None:
    with pytest.raises(InvalidInput) as e:
        form_int({"year_from": "20x"}, "year_from", lo=0, hi=9999)
    assert e.value.param == "year_from"


def test_split_list_takes_semicolons_and_commas() -> None:
    assert split_list("Nature; Cell, Science") == ["Nature", "Cell", "Science"]


def _correction(curator: str) -> Correction:
    return Correction(id="fb_1", created_at=0.0, curator=curator, answer_id=None, question="q", corrected_answer="a",
                      pmids=[], rating=None, note="", source="api", status="pending", reviewer=None, reviewed_at=None,
                      provenance={})


def test_own_correction_is_blocked_by_default(make_settings: Any) -> None:
    assert _may_review(make_settings(), Principal("ann", "curator"), _correction("ann")) is not None


def test_setting_allows_reviewing_own_correction(make_settings: Any) -> None:
    s = make_settings(server={"curators_review_own": True})
    assert _may_review(s, Principal("ann", "curator"), _correction("ann")) is None


def test_another_curator_may_review(make_settings: Any) -> None:
    assert _may_review(make_settings(), Principal("bob", "curator"), _correction("ann")) is None
