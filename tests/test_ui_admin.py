"""The admins' workbench pages (Models, Re-tune, Keys) over HTTP and in chromium: what each role may open and
post, CSRF, promote/rollback through AdapterService (audited with the admin's key id), a job page with its loss
curve, gate report and log tail, cancelling, policies, keys shown once and revoked, phone width, keyboard,
screenshots into docs/screenshots/, serve time. vLLM is faked (tests/ui_support.py); jobs are seeded in the
job store (the real re-tune runs in tests/test_ui_loop.py)."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune.ratings import RatingStore
from finetune.registry import AdapterRegistry
from finetune.store import AnswerStore, CorrectionStore, JobStore
from pubmind.audit import AuditLog
from server.auth import KeyStore
from server.ui.dashboard import DAY_S
from tests import ui_support
from tests.ui_support import UiLive, csrf

pytestmark = [pytest.mark.integration, pytest.mark.network]

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
ADAPTER = "onco"
SEED: dict[str, str] = {}  # job ids seeded by the ``live`` fixture
ui_live = ui_support.ui_live  # the module's server
browser = ui_support.browser  # the module's chromium
ADMIN_PAGES = ["/ui/models", f"/ui/models/{ADAPTER}/versions/2", "/ui/retune", "/ui/keys"]


def gate_report(candidate: str, baseline: str, f1: tuple[float, float]) -> dict[str, Any]:
    sample = [{"question": "Do mitochondria matter?", "answer": "Yes [PMID:21645374]."}]
    return {"candidate": candidate, "baseline": baseline, "promote": False, "reasons": ["held-out answer_f1 worse"],
            "backend": "fake", "candidate_metrics": {"answer_f1": f1[0], "citation_validity": 1.0, "samples": sample},
            "baseline_metrics": {"answer_f1": f1[1], "citation_validity": 0.5,
                                 "samples": [{"question": "Do mitochondria matter?", "answer": "<b>No</b> idea"}]}}


@pytest.fixture(scope="module")
def live(ui_live: UiLive, tmp_path_factory: pytest.TempPathFactory) -> UiLive:
    """Adapter onco with v1 (serving) and v2 (gate: not promoted); a finished and a running job."""
    src = tmp_path_factory.mktemp("adapter")
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(b"0")
    reg = AdapterRegistry(ui_live.settings.adapters_dir)
    hp = {"epochs": 2.0, "learning_rate": 0.01, "lora_r": 8, "policies": {}}
    reg.create_version(ADAPTER, src, {"dataset_hash": "a" * 64, "dataset": {"train": 3, "heldout": 1},
                                      "hyperparameters": hp, "parent_version": None})
    reg.promote(ADAPTER, 1, by="setup")
    reg.create_version(ADAPTER, src, {"dataset_hash": "b" * 64, "dataset": {"train": 5, "heldout": 2},
                                      "hyperparameters": hp, "parent_version": 1, "metrics": {"steps": 4, "train_loss": 1.5,
                                                                                              "seconds": 3.0},
                                      "evaluation": gate_report("onco@v2", "onco@v1", (0.25, 0.5))})
    jobs = JobStore(ui_live.settings.app_db)
    done = jobs.create(ADAPTER, hp, 2, "admin")
    jobs.update(done.id, status="succeeded", finished_at=time.time(), progress={"stage": "done", "step": 4, "loss": 1.2},
                result={"version": 2, "lora_name": "onco@v2", "promoted": False,
                        "loss_history": [[1, 3.0], [2, 2.1], [3, 1.6], [4, 1.2]],
                        "evaluation": gate_report("onco@v2", "onco@v1", (0.25, 0.5))})
    job_dir = ui_live.settings.jobs_dir / done.id
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "log.txt").write_text("".join(f"step {i} loss 1.{i}\n" for i in range(2000)) + "LAST LINE <script>x</script>\n")
    running = jobs.create("other", hp, 2, "admin")
    jobs.update(running.id, status="running", progress={"stage": "training", "step": 1, "loss": 2.5},
                result={"loss_history": [[1, 2.5]]})
    jobs.close()
    SEED.update(done=done.id, running=running.id)
    seed_history(ui_live.settings)
    return ui_live


def seed_history(settings: Any) -> None:
    """Two weeks of answers, ratings, corrections and two ingested files, dated in the past (for the
    Dashboard's screenshot and serve time)."""
    now, rng = time.time(), random.Random(0)
    answers, ratings, corrections = AnswerStore(settings.app_db), RatingStore(settings.app_db), CorrectionStore(settings.app_db)
    dated: list[tuple[str, str, float]] = []  # (table, id, created_at)
    for day in range(14):
        for _ in range(rng.randint(3, 12)):
            at = now - day * DAY_S - rng.uniform(0, 3600)
            cites = [{"pmid": 1, "supported": rng.random() > 0.15} for _ in range(rng.randint(1, 3))]
            aid = answers.record("q?", "a", "base", None, None, [], cites, {"total": rng.lognormvariate(6.5, 0.4)})
            dated.append(("answers", aid, at))
            if rng.random() < 0.4:
                ratings.rate(aid, f"reader{rng.randint(1, 3)}", rng.choice([1, 1, -1]), "")
                dated.append(("ratings", aid, at + 60))
        if day % 2 == 0:
            fb = corrections.add(question="q?", corrected_answer="a [PMID:1].", pmids=[1], curator="c")
            if day % 4 == 0:
                corrections.set_status(fb.id, "accepted", "c2")
            dated.append(("feedback", fb.id, at))
    for store in (answers, ratings, corrections):
        store.close()
    with sqlite3.connect(settings.app_db) as db:
        for table, row_id, at in dated:
            key = "answer_id" if table == "ratings" else "id"
            db.execute(f"UPDATE {table} SET created_at = ? WHERE {key} = ?", (at, row_id))
        db.execute("UPDATE feedback SET reviewed_at = created_at + 3600 WHERE reviewed_at IS NOT NULL")
    with sqlite3.connect(settings.corpus_db) as db:
        db.execute("INSERT INTO files VALUES (?,?,?,?)", ("pubmed-0001.xml.gz", "x", json.dumps({"inserted": 30}),
                                                          now - 10 * DAY_S))
        db.execute("INSERT INTO files VALUES (?,?,?,?)", ("pubmed-0002.xml.gz", "y", json.dumps({"inserted": 12,
                                                          "deleted": 2}), now - 3 * DAY_S))


def seed(live: UiLive) -> dict[str, str]:
    assert SEED, "the live fixture seeds the jobs"
    return SEED


def audit_rows(live: UiLive, action: str) -> list[Any]:
    log = AuditLog(live.settings.app_db)
    try:
        return log.query(action=action)
    finally:
        log.close()


def key_id(live: UiLive, role: str) -> str:
    ks = KeyStore(live.settings.app_db)
    try:
        p = ks.authenticate(live.keys[role])
        assert p is not None
        return p.key_id
    finally:
        ks.close()


# ---- role checks (HTTP) ------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["reader", "curator"])
@pytest.mark.parametrize("path", [*ADMIN_PAGES, "/ui/retune/{done}", "/ui/keys/x/revoke",
                                  f"/ui/models/{ADAPTER}/confirm?action=rollback"])
def test_readers_and_curators_cannot_open_admin_pages(live: UiLive, role: str, path: str) -> None:
    with live.client(role) as c:
        r = c.get(path.format(**seed(live)))
    assert r.status_code == 403


@pytest.mark.parametrize("role", ["reader", "curator"])
@pytest.mark.parametrize("path", [f"/ui/models/{ADAPTER}/promote", f"/ui/models/{ADAPTER}/rollback", "/ui/retune",
                                  "/ui/retune/{running}/cancel", "/ui/retune/policies", "/ui/keys",
                                  "/ui/keys/x/revoke"])
def test_readers_and_curators_cannot_post_admin_forms(live: UiLive, role: str, path: str) -> None:
    with live.client(role) as c:
        r = c.post(path.format(**seed(live)), data={"_csrf_token": csrf(c), "version": "2", "adapter": ADAPTER,
                                                     "name": "sneaky", "role": "admin", "after_corrections": "1"})
    assert r.status_code == 403


def test_admin_nav_lists_admin_pages_and_reader_nav_does_not(live: UiLive) -> None:
    with live.client("admin") as a, live.client("reader") as r:
        admin_html, reader_html = a.get("/ui/ask").text, r.get("/ui/ask").text
    assert 'href="/ui/keys"' in admin_html
    assert 'href="/ui/models"' not in reader_html


def test_curator_sees_dashboard_in_nav_but_not_models(live: UiLive) -> None:
    with live.client("curator") as c:
        html = c.get("/ui/ask").text
    assert 'href="/ui/dashboard"' in html
    assert 'href="/ui/retune"' not in html


@pytest.mark.parametrize("path", [f"/ui/models/{ADAPTER}/promote", "/ui/keys", "/ui/retune/policies"])
def test_admin_form_without_csrf_is_refused(live: UiLive, path: str) -> None:
    with live.client("admin") as c:
        r = c.post(path, data={"version": "2", "name": "forged", "role": "admin", "adapter": ADAPTER})
    assert r.status_code == 403


# ---- Models ------------------------------------------------------------------------------------------
def test_models_timeline_shows_versions_with_parent_dataset_and_gate(live: UiLive) -> None:
    with live.client("admin") as c:
        html = c.get("/ui/models").text
    assert 'data-version="2"' in html
    assert "parent v1" in html
    assert "bbbbbbbbbbbb" in html  # dataset hash (shortened)
    assert "gate: not promoted" in html
    assert "policies" not in html  # only tunable hyperparameters are shown


def test_version_page_shows_gate_report_beside_parent_with_deltas(live: UiLive) -> None:
    with live.client("admin") as c:
        html = c.get(f"/ui/models/{ADAPTER}/versions/2").text
    assert "-0.250" in html  # answer_f1 delta, candidate 0.25 vs baseline 0.5
    assert "+0.500" in html  # citation_validity delta
    assert "&lt;b&gt;No&lt;/b&gt; idea" in html  # the parent's sample answer, escaped by the Markdown sanitiser


def test_promote_then_rollback_through_the_service_are_audited_with_the_admins_key(live: UiLive) -> None:
    reg = AdapterRegistry(live.settings.adapters_dir)
    with live.client("admin") as c:
        confirm = c.get(f"/ui/models/{ADAPTER}/confirm?action=promote&version=2")
        assert "after this it serves" in confirm.text
        r = c.post(f"/ui/models/{ADAPTER}/promote", data={"version": "2", "_csrf_token": csrf(c)})
        assert r.status_code == 303, r.text
        assert reg.current(ADAPTER).version == 2  # type: ignore[union-attr]
        r = c.post(f"/ui/models/{ADAPTER}/rollback", data={"_csrf_token": csrf(c)})
        assert r.status_code == 303, r.text
    assert reg.current(ADAPTER).version == 1  # type: ignore[union-attr]
    promote = audit_rows(live, "adapter.promote")[0]
    assert promote.key_id == key_id(live, "admin")
    assert audit_rows(live, "adapter.rollback")[0].after == {"current": 1}


def test_promote_unknown_version_is_a_clear_404(live: UiLive) -> None:
    with live.client("admin") as c:
        r = c.post(f"/ui/models/{ADAPTER}/promote", data={"version": "99", "_csrf_token": csrf(c)})
    assert r.status_code == 404
    assert "no version 99" in r.text


# ---- Re-tune -----------------------------------------------------------------------------------------
def test_job_page_shows_progress_loss_curve_gate_and_log_tail(live: UiLive) -> None:
    with live.client("admin") as c:
        html = c.get(f"/ui/retune/{seed(live)['done']}").text
    data = json.loads(html.split('<script type="application/json" class="chart-data">')[1].split("</script>")[0])
    assert data["series"][0][1] == [3.0, 2.1, 1.6, 1.2]
    assert "LAST LINE &lt;script&gt;" in html  # log tail, escaped
    assert "step 0 loss" not in html  # only the tail
    assert "-0.250" in html  # gate report delta
    assert 'hx-trigger="every 2s"' not in html  # finished: no polling


def test_running_job_polls_and_can_be_cancelled(live: UiLive) -> None:
    job = seed(live)["running"]
    with live.client("admin") as c:
        assert 'hx-trigger="every 2s"' in c.get(f"/ui/retune/{job}").text
        r = c.post(f"/ui/retune/{job}/cancel", data={"_csrf_token": csrf(c)})
        assert r.status_code == 303
        assert 'data-status="cancelled"' in c.get(f"/ui/retune/{job}/live").text
    assert audit_rows(live, "retune.cancel")[0].target == job


def test_start_with_too_few_corrections_names_min_examples(live: UiLive) -> None:
    with live.client("admin") as c:
        r = c.post("/ui/retune", data={"adapter": ADAPTER, "min_examples": "500", "_csrf_token": csrf(c)})
    assert r.status_code == 409
    assert "min_examples=500" in r.text


def test_bad_hyperparameter_names_the_field(live: UiLive) -> None:
    with live.client("admin") as c:
        r = c.post("/ui/retune", data={"adapter": ADAPTER, "hp_epochs": "lots", "_csrf_token": csrf(c)})
    assert r.status_code == 400
    assert "hp_epochs" in r.text


def test_policy_set_in_the_workbench_is_listed(live: UiLive) -> None:
    with live.client("admin") as c:
        r = c.post("/ui/retune/policies", data={"adapter": "pol-test", "after_corrections": "7", "every_days": "",
                                                "_csrf_token": csrf(c)})
        assert r.status_code == 303, r.text
        html = c.get("/ui/retune").text
    row = html.split("<td>pol-test</td>")[1].split("</tr>")[0]
    assert "<td>7</td>" in row


def test_policy_with_bad_days_is_a_400_naming_it(live: UiLive) -> None:
    with live.client("admin") as c:
        r = c.post("/ui/retune/policies", data={"adapter": ADAPTER, "every_days": "-1", "_csrf_token": csrf(c)})
    assert r.status_code == 400
    assert "every_days" in r.text


# ---- Keys --------------------------------------------------------------------------------------------
def test_key_is_shown_once_listed_by_prefix_and_revoked_with_audit(live: UiLive) -> None:
    with live.client("admin") as c:
        r = c.post("/ui/keys", data={"name": "lab-bot", "role": "reader", "_csrf_token": csrf(c)})
        assert r.status_code == 201, r.text
        key = r.text.split('id="new-key" readonly value="')[1].split('"')[0]
        assert key.startswith("pm_")
        listing = c.get("/ui/keys").text
        assert key not in listing
        assert key[:8] in listing
        assert c.post("/ui/keys/lab-bot/revoke", data={"_csrf_token": csrf(c)}).status_code == 303
    created, revoked = audit_rows(live, "key.create")[0], audit_rows(live, "key.revoke")[0]
    assert created.key_id == key_id(live, "admin")
    assert revoked.target == created.target
    ks = KeyStore(live.settings.app_db)
    assert ks.authenticate(key) is None
    ks.close()


def test_duplicate_key_name_is_a_409(live: UiLive) -> None:
    with live.client("admin") as c:
        assert c.post("/ui/keys", data={"name": "dup", "role": "reader", "_csrf_token": csrf(c)}).status_code == 201
        r = c.post("/ui/keys", data={"name": "dup", "role": "reader", "_csrf_token": csrf(c)})
    assert r.status_code == 409


def test_admin_pages_are_served_under_300_ms(live: UiLive) -> None:
    """Median server time of each admin page (HTTP round trip on localhost, 10 requests each)."""
    medians = {}
    with live.client("admin") as c:
        for p in [*ADMIN_PAGES, f"/ui/retune/{seed(live)['done']}", "/ui/dashboard"]:
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                assert c.get(p).status_code == 200
                times.append((time.perf_counter() - t0) * 1000)
            medians[p] = sorted(times)[len(times) // 2]
    print("\nadmin page serve time, median ms:", json.dumps({k: round(v, 1) for k, v in medians.items()}))
    slow = {p: round(ms) for p, ms in medians.items() if ms >= 300}
    assert slow == {}


# ---- in the browser ----------------------------------------------------------------------------------
@pytest.fixture()
def tab(browser: Any, live: UiLive) -> Iterator[Any]:
    opened: list[Any] = []

    def open_tab(role: str, width: int = 1280, height: int = 900) -> Any:
        ctx = browser.new_context(base_url=live.url, viewport={"width": width, "height": height})
        page = ctx.new_page()
        page.errors = []  # console errors and uncaught exceptions
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto("/ui/login")
        page.fill("#key", live.keys[role])
        page.click("form button[type=submit]")
        page.wait_for_url("**/ui/ask")
        opened.append(ctx)
        return page

    yield open_tab
    for ctx in opened:
        ctx.close()


@pytest.mark.browser
@pytest.mark.parametrize("role", ["reader", "curator"])
def test_browser_non_admins_get_403_on_admin_pages(tab: Any, role: str) -> None:
    p = tab(role)
    assert [p.goto(path).status for path in ADMIN_PAGES] == [403] * len(ADMIN_PAGES)
    assert "Models" not in p.locator("header nav").inner_text()


@pytest.mark.browser
def test_browser_admin_promotes_with_confirmation_by_keyboard(tab: Any, live: UiLive) -> None:
    p = tab("admin")
    p.goto("/ui/models")
    p.focus(f"[data-testid=promote-{ADAPTER}-2]")
    p.keyboard.press("Enter")
    p.wait_for_url("**/confirm?action=promote&version=2")
    p.keyboard.press("Enter")  # the confirm button has focus
    p.wait_for_selector("#done")
    assert p.inner_text(f"[data-testid=adapter-{ADAPTER}] [data-testid=current-version]") == "v2"
    p.click(f"[data-testid=rollback-{ADAPTER}]")
    p.click("#confirm button[type=submit]")
    p.wait_for_selector("#done")
    assert p.inner_text(f"[data-testid=adapter-{ADAPTER}] [data-testid=current-version]") == "v1"
    assert p.errors == []


@pytest.mark.browser
def test_browser_job_page_draws_the_loss_curve(tab: Any, live: UiLive) -> None:
    p = tab("admin")
    p.goto(f"/ui/retune/{seed(live)['done']}")
    p.wait_for_selector("[data-chart=loss] canvas")
    assert p.errors == []


@pytest.mark.browser
@pytest.mark.parametrize("path", [*ADMIN_PAGES, "/ui/retune/{done}", "/ui/dashboard"])
def test_browser_phone_width_has_no_horizontal_scroll(tab: Any, live: UiLive, path: str) -> None:
    p = tab("admin", width=390, height=844)
    p.goto(path.format(**seed(live)))
    p.wait_for_load_state("load")
    assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert p.errors == []


@pytest.mark.browser
def test_browser_screenshots_of_admin_pages(tab: Any, live: UiLive) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    p = tab("admin")
    shots = {"models": "/ui/models", "models-version": f"/ui/models/{ADAPTER}/versions/2", "retune": "/ui/retune",
             "retune-job": f"/ui/retune/{seed(live)['done']}", "keys": "/ui/keys", "dashboard": "/ui/dashboard"}
    for name, path in shots.items():
        p.goto(path)
        p.wait_for_load_state("load")
        if path.startswith(("/ui/retune/", "/ui/dashboard")):
            p.wait_for_selector("[data-chart] canvas")
        p.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    phone = tab("curator", width=390, height=844)
    phone.goto("/ui/dashboard")
    phone.wait_for_selector("[data-chart] canvas")
    phone.screenshot(path=str(SHOTS / "dashboard-phone.png"))
    for name in [*shots, "dashboard-phone"]:
        assert (SHOTS / f"{name}.png").stat().st_size > 5_000
