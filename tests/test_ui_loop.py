"""The whole loop in one browser (Playwright + Debian chromium) on the real vLLM CPU server and the tiny model:
a reader asks and rates the answer down; curator A corrects it, picking the PMID from the evidence; curator B
accepts; the admin starts a re-tune, watches it to the end, sees the gate report and the promoted version; the
Ask page with that adapter answers with the new version; a rollback brings the previous one back.

Three more corrections (the same kind, written through the API) give the gate a held-out split."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import ui_support
from tests.conftest import settings_at
from tests.fixtures_finetune import private_home, untrained_adapter
from tests.fixtures_server import LiveServer, bearer, create_keys
from tests.ui_support import Session

pytestmark = [pytest.mark.vllm, pytest.mark.browser, pytest.mark.integration, pytest.mark.network]
browser = ui_support.browser

ADAPTER = "curated"
N_CORRECTIONS = 4
# Fast memorisation on 2 CPU cores (as tests/test_finetune_e2e.py): every linear layer, high LR.
HP = {"target_modules": "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj", "learning_rate": "0.01",
      "batch_size": "1", "epochs": "40", "lora_dropout": "0.0"}


@pytest.fixture(scope="module")
def loop(server_home: Path, tiny_model_dir: Path, vllm_server: str, shared_data: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from finetune.registry import AdapterRegistry
    from server.app import create_app
    from server.auth import KeyStore

    home = private_home(server_home, tmp_path_factory.mktemp("ui-loop") / "home")
    settings = settings_at(home, llm={"model": str(tiny_model_dir), "vllm_url": vllm_server},
                             retrieval={"context_tokens": 96})
    reg = AdapterRegistry(settings.adapters_dir)
    reg.promote(ADAPTER, reg.create_version(ADAPTER, untrained_adapter(tiny_model_dir, tmp_path_factory.mktemp("v1")),
                                            {"base_model": str(tiny_model_dir)}).version)
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    ks = KeyStore(settings.app_db)
    keys["curator2"] = ks.create(f"curator2-{uuid.uuid4().hex[:6]}", "curator")
    ks.close()
    data = json.loads((shared_data / "pubmedqa/data/ori_pqal.json").read_text())
    items = []
    for pmid, v in list(data.items())[:N_CORRECTIONS]:
        phrase = " ".join(v["LONG_ANSWER"].split()[:5]).rstrip(".,;:")
        items.append({"pmid": int(pmid), "question": v["QUESTION"], "text": f"{v['final_decision'].capitalize()}. {phrase} "})
    with LiveServer(create_app(settings)) as srv:
        yield {"url": srv.url, "keys": keys, "items": items}


def ask(s: Session, question: str) -> str:
    """Ask with the adapter on the Ask page; returns the version that answered."""
    s.goto("/ui/ask")
    s.page.fill("#question", question)
    s.page.click("details.filters summary")
    s.page.select_option("#model", ADAPTER)
    s.page.click("#ask-button")
    s.page.wait_for_selector("#answer .prose", timeout=120_000)
    return s.page.inner_text("#served")


def test_whole_loop_in_the_browser(loop: dict[str, Any], browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    first, *others = loop["items"]
    tabs: list[Session] = []

    def tab(role: str) -> Session:
        tabs.append(Session(browser, loop["url"], loop["keys"], role))
        return tabs[-1]

    try:
        # 1. a reader asks (adapter v1) and rates the answer down
        reader = tab("reader")
        assert ask(reader, first["question"]) == f"{ADAPTER}@v1"
        answer_id = reader.page.get_attribute("#answer", "data-answer-id")
        reader.page.fill("#answer input[name=comment]", "does not say what the study found")
        reader.page.click("#answer button[value=down]")
        reader.page.wait_for_selector("#rating .rated")

        # 2. curator A corrects it from the queue, picking the PMID from the evidence
        a = tab("curator")
        a.goto("/ui/curate?kind=down")
        a.page.click(f"a[href='/ui/answers/{answer_id}']")
        a.page.click(f"a[href='/ui/curate/correct/{answer_id}']")
        a.page.fill("#corrected_answer", first["text"])
        a.page.click(f"button.cite-insert[data-pmid='{first['pmid']}']")
        a.page.wait_for_selector(f"#pmid-check li[data-pmid='{first['pmid']}'][data-ok=true]")
        a.page.click("#correction button[type=submit]")
        a.page.wait_for_url("**/ui/curate/corrections/fb_*")
        correction_url = a.page.url

        # 3. curator B accepts it
        b = tab("curator2")
        b.goto(correction_url)
        b.page.fill("#review-note", "Matches the abstract's conclusion.")
        b.page.click("#review button[value=accepted]")
        b.page.wait_for_selector("#status.status-accepted")

        # three more accepted corrections through the API, so the gate has a held-out split
        with httpx.Client(base_url=loop["url"], timeout=120) as api:
            for it in others:
                r = api.post("/v1/feedback", headers=bearer(loop["keys"]["curator"]), json={
                    "question": it["question"], "corrected_answer": it["text"] + f"[PMID:{it['pmid']}].",
                    "pmids": [it["pmid"]]})
                assert r.status_code == 201, r.text
                r = api.patch(f"/v1/feedback/{r.json()['id']}", headers=bearer(loop["keys"]["curator2"]),
                              json={"status": "accepted"})
                assert r.status_code == 200, r.text

        # 4. the admin starts a re-tune and watches it to the end: gate report, promoted version
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job process: 1 torch thread on a busy CPU
        admin = tab("admin")
        admin.goto("/ui/retune")
        admin.page.fill("#adapter", ADAPTER)
        admin.page.fill("#min_examples", str(N_CORRECTIONS))
        admin.page.click("#retune-form details summary")
        for key, value in HP.items():
            admin.page.fill(f"#hp_{key}", value)
        admin.page.click("#retune-form button[type=submit]")
        admin.page.wait_for_url(re.compile(r".*/ui/retune/job_[0-9a-f]+$"))
        admin.page.wait_for_selector("#job-live[data-status=succeeded]", timeout=600_000)
        assert admin.page.locator("#job-gate").count() == 1
        assert admin.page.inner_text("#job-promoted") == "promoted: now serving"
        admin.page.wait_for_selector("[data-chart=loss] canvas")  # the loss curve, drawn from the job's loss_history
        admin.page.click("#job-version a")  # the new version's gate report beside its parent's
        assert admin.page.locator("#gate-metrics tbody tr").count() >= 1
        admin.goto("/ui/models")
        assert admin.page.inner_text(f"#adapter-{ADAPTER} [data-testid=current-version]") == "v2"

        # 5. the Ask page with that adapter answers with the new version
        assert ask(reader, first["question"]) == f"{ADAPTER}@v2"

        # 6. a rollback (with confirmation) brings the previous version back
        admin.page.click(f"[data-testid=rollback-{ADAPTER}]")
        admin.page.click("#confirm button[type=submit]")
        admin.page.wait_for_url(re.compile(r".*/ui/models(\?.*)?$"))
        assert admin.page.inner_text(f"#adapter-{ADAPTER} [data-testid=current-version]") == "v1"
        assert ask(reader, first["question"]) == f"{ADAPTER}@v1"
        for s in tabs:
            assert s.errors == [], s.errors
    finally:
        for s in tabs:
            s.close()
