"""The Dashboard: its aggregations (pure functions, UTC days and weeks) and the page over the records of a live
app (who may open it, the series it sends to the charts)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from finetune.ratings import RatingStore
from finetune.store import AnswerStore, CorrectionStore
from pubmind.audit import Actor, AuditLog
from server.ui.dashboard import (
    DAY_S,
    corpus_growth,
    corrections_per_week,
    day_start,
    latency_per_day,
    per_day,
    percentile,
    promotions,
    share_per_day,
    week_start,
)
from tests import ui_support
from tests.ui_support import UiLive

ui_live = ui_support.ui_live  # the module's server

T0 = dt.datetime(2026, 3, 4, 15, 30, tzinfo=dt.UTC).timestamp()  # a Wednesday afternoon
D0 = dt.datetime(2026, 3, 4, tzinfo=dt.UTC).timestamp()


# ---- pure functions -------------------------------------------------------------------------------------
def test_day_start_is_utc_midnight() -> None:
    assert day_start(T0) == D0


def test_week_start_is_monday() -> None:
    assert week_start(T0) == D0 - 2 * DAY_S


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95)) == (50, 95)


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_per_day_fills_empty_days_with_zero() -> None:
    got = per_day([T0, T0 + 60, T0 + 2 * DAY_S], T0 - DAY_S, T0 + 2 * DAY_S)
    assert got == [(D0 - DAY_S, 0), (D0, 2), (D0 + DAY_S, 0), (D0 + 2 * DAY_S, 1)]


def test_per_day_ignores_events_outside_the_window() -> None:
    assert per_day([T0 - 5 * DAY_S], T0, T0) == [(D0, 0)]


def test_latency_per_day_p50_p95() -> None:
    rows = [(T0, float(ms)) for ms in range(10, 210, 10)] + [(T0 + DAY_S, 7.0)]
    assert latency_per_day(rows, T0, T0 + DAY_S) == [(D0, 100.0, 190.0), (D0 + DAY_S, 7.0, 7.0)]


def test_latency_day_without_answers_is_none() -> None:
    assert latency_per_day([], T0, T0) == [(D0, None, None)]


def test_share_per_day_sums_parts_over_wholes() -> None:
    rows = [(T0, 1, 4), (T0 + 10, 0, 4), (T0 + DAY_S, 0, 0)]
    assert share_per_day(rows, T0, T0 + DAY_S) == [(D0, 0.125), (D0 + DAY_S, None)]


def test_corrections_per_week_counts_accepted_by_review_week() -> None:
    rows = [(T0, "accepted", T0 + 7 * DAY_S), (T0, "pending", None), (T0 + 7 * DAY_S, "rejected", T0 + 7 * DAY_S)]
    week = D0 - 2 * DAY_S
    assert corrections_per_week(rows, T0, T0 + 7 * DAY_S) == [(week, 2, 0), (week + 7 * DAY_S, 1, 1)]


def test_promotions_oldest_first_with_versions() -> None:
    rows = [(T0 + 5, "adapter.rollback", "onco", {"current": 2}, {"current": 1}),
            (T0, "adapter.promote", "onco", {"current": 1}, {"current": 2})]
    assert [(p["action"], p["from"], p["to"]) for p in promotions(rows)] == [("promote", 1, 2), ("rollback", 2, 1)]


def test_corpus_growth_counts_back_from_the_current_size() -> None:
    files = [(T0 + 100, 30, 5), (T0, 50, 0)]
    assert corpus_growth(files, current=120, since=T0 - 10, now=T0 + 200) == [
        (T0 - 10, 45), (T0, 95), (T0 + 100, 120), (T0 + 200, 120)]


def test_corpus_growth_leaves_out_files_before_the_window() -> None:
    files = [(T0 + 100, 30, 5), (T0, 50, 0)]
    assert corpus_growth(files, current=120, since=T0 + 50, now=T0 + 200) == [
        (T0 + 50, 95), (T0 + 100, 120), (T0 + 200, 120)]


def test_corpus_growth_without_files_is_flat() -> None:
    assert corpus_growth([], current=50, since=T0 - 10, now=T0) == [(T0 - 10, 50), (T0, 50)]


# ---- the page -------------------------------------------------------------------------------------------


def chart(html: str, name: str) -> dict[str, object]:
    part = html.split(f'data-chart="{name}"')[1]
    data: dict[str, object] = json.loads(part.split('class="chart-data">')[1].split("</script>")[0])
    return data


@pytest.mark.integration
@pytest.mark.network
def test_reader_cannot_open_the_dashboard(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        assert c.get("/ui/dashboard").status_code == 403


@pytest.mark.integration
@pytest.mark.network
def test_bad_window_is_a_400_naming_days(ui_live: UiLive) -> None:
    with ui_live.client("curator") as c:
        r = c.get("/ui/dashboard?days=0")
    assert r.status_code == 400
    assert "days" in r.text


@pytest.mark.integration
@pytest.mark.network
def test_dashboard_charts_todays_records(ui_live: UiLive) -> None:
    s = ui_live.settings
    answers, ratings, corrections = AnswerStore(s.app_db), RatingStore(s.app_db), CorrectionStore(s.app_db)
    ids = [answers.record("q?", "a", "base", None, None, [], [{"pmid": 1, "supported": i == 0}], {"total": 100.0 * (i + 1)})
           for i in range(4)]
    ratings.rate(ids[0], "reader-x", -1, "bad")
    ratings.rate(ids[1], "reader-x", 1, "")
    fb = corrections.add(question="q?", corrected_answer="a [PMID:1].", pmids=[1], curator="c")
    corrections.set_status(fb.id, "accepted", "c2")
    audit = AuditLog(s.app_db)
    audit.record("adapter.promote", "onco", Actor.cli(), before={"current": None}, after={"current": 1})
    for store in (answers, ratings, corrections, audit):
        store.close()
    with ui_live.client("curator") as c:
        html = c.get("/ui/dashboard?days=7").text
    today = day_start(time.time())
    questions = chart(html, "questions")
    assert questions["x"][-1] == today  # type: ignore[index]
    assert questions["series"][0][1][-1] >= 4  # type: ignore[index]
    assert chart(html, "down")["series"][0][1][-1] == 0.5  # type: ignore[index]
    assert chart(html, "corrections")["series"][1][1][-1] >= 1  # type: ignore[index]
    assert chart(html, "corpus")["series"][0][1][-1] == 50  # type: ignore[index]
    assert "onco promote" in html
