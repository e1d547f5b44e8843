"""The workbench in a real browser: Playwright driving Debian's chromium (/usr/bin/chromium) against the app
served by uvicorn (one server and one browser for the module), vLLM faked (tests/ui_support.py).

Every page for each role, what a role must not see or do, CSRF, sanitising (a <script> in an answer or a note
never runs), keyboard and phone width, and screenshots of each page into docs/screenshots/."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ui_support
from tests.ui_support import UNSUPPORTED_PMID, Session, UiLive, csrf

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.network]

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
LACE_PMID = 21645374

ui_live = ui_support.ui_live  # the module's server
browser = ui_support.browser  # the module's chromium


@pytest.fixture()
def tab(browser: Any, ui_live: UiLive) -> Iterator[Any]:
    opened: list[Session] = []

    def open_tab(role: str | None, **kw: Any) -> Session:
        s = Session(browser, ui_live.url, ui_live.keys, role, **kw)
        opened.append(s)
        return s

    yield open_tab
    for s in opened:
        s.close()


def ask(s: Session, question: str = QUESTION) -> None:
    s.goto("/ui/ask")
    s.page.fill("#question", question)
    s.page.click("#ask-button")
    s.page.wait_for_selector("#answer .prose", timeout=60_000)


def ask_and_rate_down(live: UiLive, comment: str) -> str:
    """An answer asked and rated down by the reader (over HTTP); returns its id."""
    with live.client("reader") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION, "model": "base"}, headers={"x-csrftoken": csrf(c)})
        answer_id = re.search(r'data-answer-id=\\"(ans_[0-9a-f]+)', r.text)
        assert answer_id is not None, r.text[-2000:]
        rated = c.post(f"/ui/answers/{answer_id.group(1)}/rate", data={"rating": "down", "comment": comment},
                       headers={"x-csrftoken": csrf(c)})
        assert rated.status_code == 200, rated.text
    return answer_id.group(1)


# ---- reader ------------------------------------------------------------------------------------------
def test_reader_answer_streams_with_markers_cards_and_flags(tab: Any) -> None:
    s = tab("reader")
    ask(s)
    assert s.page.locator("#answer a.cite").count() >= 1
    assert s.page.locator("#answer .cite.unsupported").count() == 1
    assert str(UNSUPPORTED_PMID) in s.page.inner_text("#answer .warning")
    assert s.page.locator("#evidence li.evidence").count() >= 3
    assert s.page.locator(f"#ev-{LACE_PMID} .badge.ok").inner_text() == "cited"
    assert s.page.locator("#evidence mark").count() >= 1  # query terms highlighted
    assert s.errors == []


def test_citation_marker_moves_focus_to_its_card(tab: Any) -> None:
    s = tab("reader")
    ask(s)
    marker = s.page.locator("#answer a.cite").first
    pmid = marker.get_attribute("data-pmid")
    marker.click()
    assert s.page.evaluate("document.activeElement.id") == f"ev-{pmid}"


def test_script_in_an_answer_is_not_executed(tab: Any) -> None:
    s = tab("reader")
    ask(s)
    assert s.page.evaluate("window.__pwned === undefined")
    assert "window.__pwned" in s.page.inner_text("#answer")  # shown as text
    assert s.page.locator("#answer script").count() == 0


def test_reader_rates_down_and_it_reaches_the_curators_queue(tab: Any) -> None:
    s = tab("reader")
    ask(s)
    answer_id = s.page.get_attribute("#answer", "data-answer-id")
    s.page.fill("#answer input[name=comment]", "misses the key result")
    s.page.click("#answer button[value=down]")
    s.page.wait_for_selector("#rating .rated")
    assert "curators' queue" in s.page.inner_text("#rating")
    c = tab("curator")
    c.goto("/ui/curate?kind=down")
    assert c.page.locator(f"a[href='/ui/answers/{answer_id}']").count() == 1


def test_my_questions_lists_the_readers_answers(tab: Any) -> None:
    s = tab("reader")
    ask(s)
    answer_id = s.page.get_attribute("#answer", "data-answer-id")
    s.goto("/ui/my")
    s.page.click(f"a[href='/ui/answers/{answer_id}']")
    assert s.page.inner_text("h1.question") == QUESTION


def test_reader_nav_hides_curation(tab: Any) -> None:
    s = tab("reader")
    s.goto("/ui/ask")
    links = s.page.locator("header nav a").all_inner_texts()
    assert "Curate" not in links


def test_reader_cannot_open_curate(tab: Any) -> None:
    s = tab("reader")
    resp = s.goto("/ui/curate")
    assert resp.status == 403


def test_reader_cannot_post_curate_forms(tab: Any, ui_live: UiLive) -> None:
    s = tab("reader")
    s.goto("/ui/ask")
    r = s.page.request.post("/ui/curate/corrections", form={
        "_csrf_token": s.csrf(), "question": "q?", "corrected_answer": "a", "note": ""})
    assert r.status == 403


MY_PAGES = ["/ui/ask", "/ui/my", "/ui/curate", "/ui/curate/corrections", "/ui/curate/new", "/ui/curate/import"]
CURATOR_ONLY = {"/ui/curate", "/ui/curate/corrections", "/ui/curate/new", "/ui/curate/import"}


@pytest.mark.parametrize("role", ["reader", "curator", "admin"])
def test_each_page_for_each_role(tab: Any, role: str) -> None:
    """Every Ask/Curate page opens for the roles allowed (no console errors) and is 403 for the others."""
    s = tab(role)
    got = {p: s.goto(p).status for p in MY_PAGES}
    want = {p: 403 if role == "reader" and p in CURATOR_ONLY else 200 for p in MY_PAGES}
    assert got == want
    assert s.errors == [m for m in s.errors if "403" in m]  # only the refused pages' own status


@pytest.mark.parametrize("path", ["/ui/curate/corrections", "/ui/curate/check", "/ui/curate/import",
                                  "/ui/curate/corrections/fb_x/review"])
def test_reader_cannot_post_any_curate_form(tab: Any, path: str) -> None:
    s = tab("reader")
    s.goto("/ui/ask")
    r = s.page.request.post(path, form={"_csrf_token": s.csrf(), "status": "accepted", "corrected_answer": "a"})
    assert r.status == 403


def test_reader_cannot_open_someone_elses_answer(tab: Any, ui_live: UiLive) -> None:
    with ui_live.client("admin") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION}, headers={"x-csrftoken": csrf(c)})
    answer_id = re.search(r'data-answer-id=\\"(ans_[0-9a-f]+)', r.text)
    assert answer_id is not None
    s = tab("reader")
    assert s.goto(f"/ui/answers/{answer_id.group(1)}").status == 403


def test_forged_form_without_csrf_is_refused(tab: Any) -> None:
    s = tab("curator")
    s.goto("/ui/curate")
    r = s.page.request.post("/ui/curate/corrections", form={"question": "q?", "corrected_answer": "a"})
    assert r.status == 403


# ---- curators ----------------------------------------------------------------------------------------
def test_curator_corrects_another_accepts_with_history(tab: Any, ui_live: UiLive) -> None:
    answer_id = ask_and_rate_down(ui_live, "wrong")
    a = tab("curator")
    a.goto("/ui/curate")
    a.page.click(f"a[href='/ui/answers/{answer_id}']")
    assert "Provenance" in a.page.inner_text("main")
    a.page.click(f"a[href='/ui/curate/correct/{answer_id}']")
    editor = a.page.locator("#corrected_answer")
    assert "mitochondria" in editor.input_value()  # prefilled with the answer
    editor.fill("Yes: mitochondria take part in lace plant PCD [PMID:123].")
    a.page.wait_for_selector("#pmid-check li[data-ok=false]")
    editor.fill("Yes: mitochondria take part in lace plant PCD ")
    a.page.click(f"button.cite-insert[data-pmid='{LACE_PMID}']")  # picks the PMID from the evidence
    a.page.wait_for_selector(f"#pmid-check li[data-pmid='{LACE_PMID}'][data-ok=true]")
    assert a.page.is_checked(f"#pm-{LACE_PMID}")
    a.page.fill("#note", "Model cited an article outside the evidence.")
    a.page.click("#correction button[type=submit]")
    a.page.wait_for_url("**/ui/curate/corrections/fb_*")
    url = a.page.url
    assert a.page.inner_text("#status") == "pending"
    assert a.page.locator("#review-blocked").count() == 1  # not their own review
    b = tab("curator2")
    b.goto(url)
    b.page.fill("#review-note", "Checked against the abstract. <script>window.__pwned = 2</script>")
    b.page.click("#review button[value=accepted]")
    b.page.wait_for_selector("#status.status-accepted")
    assert "Checked against the abstract" in b.page.inner_text("#history")
    assert b.page.evaluate("window.__pwned === undefined")


def test_curator_cannot_accept_own_correction_by_post(tab: Any, ui_live: UiLive) -> None:
    with ui_live.client("curator") as c:
        r = c.post("/ui/curate/corrections", data={"question": QUESTION, "corrected_answer": f"Yes [PMID:{LACE_PMID}].",
                                                   "pmids": str(LACE_PMID), "_csrf_token": csrf(c)})
        assert r.status_code == 303, r.text
        review = c.post(r.headers["location"] + "/review", data={"status": "accepted", "_csrf_token": csrf(c)})
    assert review.status_code == 403


def test_reject_with_note_is_in_the_history(tab: Any, ui_live: UiLive) -> None:
    with ui_live.client("curator") as c:
        r = c.post("/ui/curate/corrections", data={"question": QUESTION, "corrected_answer": f"No [PMID:{LACE_PMID}].",
                                                   "pmids": str(LACE_PMID), "_csrf_token": csrf(c)})
        url = r.headers["location"]
    s = tab("curator2")
    s.goto(url)
    s.page.fill("#review-note", "Contradicts the *conclusions*.")
    s.page.click("#review button[value=rejected]")
    s.page.wait_for_selector("#status.status-rejected")
    assert s.page.inner_html("#history em") == "conclusions"  # the note, as Markdown


def test_import_check_only_stores_nothing(ui_live: UiLive) -> None:
    line = json.dumps({"question": "Checked only?", "corrected_answer": f"Yes [PMID:{LACE_PMID}].", "pmids": [LACE_PMID]})
    with ui_live.client("curator") as c:
        r = c.post("/ui/curate/import", data={"_csrf_token": csrf(c), "check_only": "on"},
                   files={"file": ("c.jsonl", line.encode(), "application/json")})
        assert r.status_code == 200, r.text
        listed = c.get("/ui/curate/corrections").text
    assert ">valid<" in r.text
    assert "Checked only?" not in listed


def test_search_box_adds_pmids(tab: Any) -> None:
    s = tab("curator")
    s.goto("/ui/curate/new")
    s.page.fill("#pmid-search", "lace plant mitochondria")
    s.page.wait_for_selector(f"#hit-{LACE_PMID}")
    s.page.click(f"#search-hits button.cite-insert[data-pmid='{LACE_PMID}']")
    assert f"[PMID:{LACE_PMID}]" in s.page.input_value("#corrected_answer")
    assert s.page.is_checked(f"#hit-{LACE_PMID}")


def test_import_reports_each_line(tab: Any, tmp_path: Path) -> None:
    path = tmp_path / "corrections.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "Is it?", "corrected_answer": f"Yes [PMID:{LACE_PMID}].", "pmids": [LACE_PMID]}),
        json.dumps({"question": "Is it?", "corrected_answer": "No [PMID:1].", "pmids": []}),
        "{not json",
    ]) + "\n")
    s = tab("curator")
    s.goto("/ui/curate/import")
    s.page.set_input_files("#file", str(path))
    s.page.click("main form button[type=submit]")
    s.page.wait_for_selector("#import-report")
    rows = s.page.locator("#import-report tbody tr")
    assert rows.count() == 3
    assert rows.nth(0).locator("a").count() == 1  # imported, linked
    assert "not in the corpus" in rows.nth(1).inner_text()
    assert rows.nth(2).locator("td").first.inner_text() == "3"


def test_admin_nav_shows_curation(tab: Any) -> None:
    s = tab("admin")
    s.goto("/ui/ask")
    assert "Curate" in s.page.locator("header nav a").all_inner_texts()


# ---- keyboard, phone width, console ------------------------------------------------------------------
def test_keyboard_sign_in_and_ask(tab: Any, ui_live: UiLive) -> None:
    s = tab(None)
    s.goto("/ui/login")
    s.page.keyboard.type(ui_live.keys["reader"])  # the key field has focus
    s.page.keyboard.press("Enter")
    s.page.wait_for_url("**/ui/ask")
    s.page.focus("#question")
    s.page.keyboard.type(QUESTION)
    s.page.keyboard.press("Tab")  # to the filters' summary
    s.page.keyboard.press("Tab")  # to the Ask button
    s.page.keyboard.press("Enter")
    s.page.wait_for_selector("#answer .prose", timeout=60_000)


@pytest.mark.parametrize("path", ["/ui/ask", "/ui/my", "/ui/curate", "/ui/curate/corrections", "/ui/curate/new",
                                  "/ui/curate/import"])
def test_phone_width_has_no_horizontal_scroll(tab: Any, path: str) -> None:
    s = tab("curator", width=390, height=844)
    s.goto(path)
    assert s.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert s.errors == []


# ---- screenshots (README) and serve time -------------------------------------------------------------
def test_screenshots_of_each_page(tab: Any, ui_live: UiLive) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    answer_id = ask_and_rate_down(ui_live, "the answer cites an article outside the evidence")
    login = tab(None)
    login.goto("/ui/login")
    login.page.screenshot(path=str(SHOTS / "login.png"))
    r = tab("reader")
    ask(r)
    r.page.screenshot(path=str(SHOTS / "ask.png"), full_page=True)
    r.goto("/ui/my")
    r.page.screenshot(path=str(SHOTS / "my-questions.png"))
    c = tab("curator")
    c.goto("/ui/curate")
    c.page.screenshot(path=str(SHOTS / "curate-queue.png"), full_page=True)
    c.goto(f"/ui/answers/{answer_id}")
    c.page.screenshot(path=str(SHOTS / "answer-provenance.png"), full_page=True)
    c.goto(f"/ui/curate/correct/{answer_id}")
    c.page.wait_for_selector("#pmid-check li")
    c.page.screenshot(path=str(SHOTS / "correct.png"), full_page=True)
    c.page.fill("#corrected_answer", f"Yes: mitochondria take part in lace plant PCD [PMID:{LACE_PMID}].")
    c.page.fill("#note", "The model cited an article **outside** the evidence.")
    c.page.click("#correction button[type=submit]")
    c.page.wait_for_url("**/ui/curate/corrections/fb_*")
    c2 = tab("curator2")
    c2.goto(c.page.url)
    c2.page.screenshot(path=str(SHOTS / "review.png"), full_page=True)
    c.goto("/ui/curate/corrections")
    c.page.screenshot(path=str(SHOTS / "corrections.png"), full_page=True)
    phone = tab("reader", width=390, height=844)
    ask(phone)
    phone.page.screenshot(path=str(SHOTS / "ask-phone.png"))
    for name in ("login", "ask", "my-questions", "curate-queue", "answer-provenance", "correct", "review",
                 "corrections", "ask-phone"):
        assert (SHOTS / f"{name}.png").stat().st_size > 5_000


def test_pages_are_served_under_300_ms(ui_live: UiLive) -> None:
    """Median server time of each page (HTTP round trip on localhost, 10 requests per page)."""
    answer_id = ask_and_rate_down(ui_live, "timing")
    pages = ["/ui/ask", "/ui/my", f"/ui/answers/{answer_id}", "/ui/curate", "/ui/curate/corrections",
             f"/ui/curate/correct/{answer_id}", "/ui/curate/import"]
    medians = {}
    with ui_live.client("curator") as c:
        for p in pages:
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                assert c.get(p).status_code == 200
                times.append((time.perf_counter() - t0) * 1000)
            medians[p] = sorted(times)[len(times) // 2]
    print("\nworkbench page serve time, median ms:", json.dumps({k: round(v, 1) for k, v in medians.items()}))
    slow = {p: round(ms) for p, ms in medians.items() if ms >= 300}
    assert slow == {}
