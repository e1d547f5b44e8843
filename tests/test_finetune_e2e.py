"""The re-tuning loop end to end: a real vLLM (CPU, tiny model), the API over HTTP, a real 50-article
PubMedQA index. Curators correct answers, an admin re-tunes, the job process trains a LoRA on the tiny model,
the gate evaluates it through vLLM and promotes it, the next query is answered by the new version (which
learned the corrections), and a rollback serves the previous version again."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import settings_at
from tests.fixtures_finetune import private_home, untrained_adapter
from tests.fixtures_server import LiveServer, bearer, create_keys

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.network]

ADAPTER = "curated"
N_CORRECTIONS = 4
# Fast memorisation on 2 CPU cores: every linear layer, high LR, one example per step.
HYPERPARAMETERS = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   "learning_rate": 0.01, "batch_size": 1, "epochs": 40, "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def loop(server_home: Path, tiny_model_dir: Path, vllm_server: str, shared_data: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from finetune.registry import AdapterRegistry
    from server.app import create_app

    home = private_home(server_home, tmp_path_factory.mktemp("ft-e2e") / "home")
    # short prompts (small evidence budget) so the tiny model learns in seconds
    settings = settings_at(home, llm={"model": str(tiny_model_dir), "vllm_url": vllm_server},
                             retrieval={"context_tokens": 96})
    # an earlier deployment: version 1 of the adapter (an untrained LoRA: answers like the base model)
    reg = AdapterRegistry(settings.adapters_dir)
    v1 = reg.create_version(ADAPTER, untrained_adapter(tiny_model_dir, tmp_path_factory.mktemp("v1")),
                            {"base_model": str(tiny_model_dir)})
    reg.promote(ADAPTER, v1.version)
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    data = json.loads((shared_data / "pubmedqa/data/ori_pqal.json").read_text())
    items = []
    for pmid, v in list(data.items())[:N_CORRECTIONS]:
        phrase = " ".join(v["LONG_ANSWER"].split()[:5]).rstrip(".,;:")
        items.append({"pmid": int(pmid), "question": v["QUESTION"],
                      "answer": f"{v['final_decision'].capitalize()}. {phrase} [PMID:{pmid}].", "phrase": phrase})
    with LiveServer(create_app(settings)) as srv:
        yield {"url": srv.url, "keys": keys, "settings": settings, "items": items}


def http(loop: dict[str, Any], role: str) -> httpx.Client:
    return httpx.Client(base_url=loop["url"], headers=bearer(loop["keys"][role]), timeout=120)


def ask(c: httpx.Client, question: str, model: str) -> dict[str, Any]:
    r = c.post("/v1/query", json={"question": question, "model": model})
    assert r.status_code == 200, r.text
    return r.json()


def test_bad_corrections_are_refused(loop: dict[str, Any]) -> None:
    item = loop["items"][0]
    with http(loop, "curator") as c:
        cases = [
            ({"question": item["question"], "corrected_answer": "x [PMID:1]", "pmids": []}, "corrected_answer",
             "cites PMIDs not in the corpus: [1]"),
            ({"question": item["question"], "corrected_answer": item["answer"], "pmids": [987654321]}, "pmids",
             "pmids not in the corpus: [987654321]"),
            ({"question": item["question"], "corrected_answer": "   ", "pmids": [item["pmid"]]}, "corrected_answer",
             "must be a non-empty string"),
            ({"corrected_answer": item["answer"]}, "question", "question is required"),
            ({"answer_id": "ans_unknown", "corrected_answer": item["answer"]}, "answer_id", "not found"),
        ]
        for body, param, msg in cases:
            r = c.post("/v1/feedback", json=body)
            assert r.status_code in (400, 404), r.text
            err = r.json()["error"]
            assert err["param"] == param, err
            assert msg in err["message"], err
    with http(loop, "reader") as c:
        r = c.post("/v1/feedback", json={"question": "q", "corrected_answer": item["answer"]})
        assert r.status_code == 403
        assert "needs role 'curator'" in r.json()["error"]["message"]


def test_correct_retune_promote_serve_rollback(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    t_start = time.monotonic()
    items = loop["items"]
    with http(loop, "reader") as reader, http(loop, "curator") as curator, http(loop, "admin") as admin:
        # 1. the served answers (adapter v1, untrained) do not contain the curated text
        before = {it["pmid"]: ask(reader, it["question"], ADAPTER) for it in items}
        for it in items:
            assert before[it["pmid"]]["adapter"] == f"{ADAPTER}@v1"
            assert it["phrase"] not in before[it["pmid"]]["answer"]

        # 2. curators correct them (with provenance) and accept them
        ids = []
        for it in items:
            r = curator.post("/v1/feedback", json={"answer_id": before[it["pmid"]]["id"],
                                                   "corrected_answer": it["answer"], "pmids": [it["pmid"]],
                                                   "rating": 1, "note": "curated in the e2e test"})
            assert r.status_code == 201, r.text
            fb = r.json()
            assert fb["question"] == it["question"]
            assert fb["curator"].startswith("curator")
            assert fb["provenance"]["adapter_version"] == f"{ADAPTER}@v1"
            assert fb["provenance"]["retrieved_pmids"] == [e["pmid"] for e in before[it["pmid"]]["evidence"]]
            assert fb["provenance"]["original_answer"] == before[it["pmid"]]["answer"]
            ids.append(fb["id"])
        assert reader.patch(f"/v1/feedback/{ids[0]}", json={"status": "accepted"}).status_code == 403
        for fid in ids:
            own = curator.patch(f"/v1/feedback/{fid}", json={"status": "accepted"})
            assert own.status_code == 403  # its author may not review it; another reviewer (the admin) does
            r = admin.patch(f"/v1/feedback/{fid}", json={"status": "accepted"})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "accepted", r.text
        listed = curator.get("/v1/feedback", params={"status": "accepted"}).json()
        assert {f["id"] for f in listed["data"]} == set(ids)

        # 3. an admin re-tunes (curators may not); a second job for the adapter is refused while one runs
        assert curator.post("/v1/retune", json={"adapter": ADAPTER}).status_code == 403
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # job process: 1 torch thread (much faster on a busy CPU)
        r = admin.post("/v1/retune", json={"adapter": ADAPTER, "hyperparameters": HYPERPARAMETERS,
                                           "min_examples": N_CORRECTIONS})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        r2 = admin.post("/v1/retune", json={"adapter": ADAPTER, "min_examples": N_CORRECTIONS})
        assert r2.status_code == 409
        assert job_id in r2.json()["error"]["message"]

        # 4. progress, then the outcome
        steps_seen: set[int] = set()
        deadline = time.monotonic() + 300
        while True:
            job = admin.get(f"/v1/retune/{job_id}").json()
            if job["progress"].get("step"):
                steps_seen.add(job["progress"]["step"])
                assert job["progress"]["loss"] is not None
            if job["status"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, f"job still {job['status']}: {job['progress']}"
            time.sleep(1.0)
        assert job["status"] == "succeeded", job
        assert len(steps_seen) >= 2  # progress was visible while training
        assert job["version"] == 2
        assert job["lora_name"] == f"{ADAPTER}@v2"
        assert job["promoted"] is True
        ev = job["evaluation"]
        assert ev["backend"].startswith("vllm")
        assert ev["baseline"] == f"{ADAPTER}@v1"
        assert ev["promote"]
        assert ev["heldout"] >= 1
        assert job["training"]["tokens_per_second"] > 0
        # the gate saw (through vLLM) that v2 reproduces the corrections and v1 does not
        assert ev["candidate_trained_metrics"]["answer_f1"] > ev["baseline_trained_metrics"]["answer_f1"] + 0.5
        train_questions = [e for e in _dataset(loop, job_id) if e["split"] == "train"]
        assert len(train_questions) >= 2

        # 5. the next query is answered by the new version, which learned the corrections
        adapters = reader.get("/v1/adapters").json()["data"]
        (ours,) = [a for a in adapters if a["name"] == ADAPTER]
        assert ours["current"] == 2
        assert ours["versions"][1]["promoted_by_gate"] is True  # a reader's view: no manifest, paths or samples
        by_q = {it["question"]: it for it in items}
        learned = 0
        for ex in train_questions:
            it = by_q[ex["question"]]
            after = ask(reader, it["question"], ADAPTER)
            assert after["adapter"] == f"{ADAPTER}@v2"
            learned += it["phrase"] in after["answer"] and it["pmid"] in [c["pmid"] for c in after["citations"]]
        assert learned == len(train_questions), "the re-tuned model did not reproduce its corrections"

        # 6. rollback serves version 1 again; promoting v2 by hand serves it again
        assert admin.post(f"/v1/adapters/{ADAPTER}/rollback").status_code == 200
        it = by_q[train_questions[0]["question"]]
        again = ask(reader, it["question"], ADAPTER)
        assert again["adapter"] == f"{ADAPTER}@v1"
        assert it["phrase"] not in again["answer"]
        assert again["answer"] == before[it["pmid"]]["answer"]  # greedy: exactly what v1 said before
        assert curator.post(f"/v1/adapters/{ADAPTER}/promote", json={"version": 2}).status_code == 403
        r = admin.post(f"/v1/adapters/{ADAPTER}/promote", json={"version": 2})
        assert r.status_code == 200
        assert r.json()["lora_name"] == f"{ADAPTER}@v2"
        assert it["phrase"] in ask(reader, it["question"], f"{ADAPTER}@v2")["answer"]
        assert admin.post(f"/v1/adapters/{ADAPTER}/promote", json={"version": 9}).status_code == 404
    print(f"\ne2e re-tune loop: {time.monotonic() - t_start:.1f}s, training {job['training']}")


def test_cancel_through_the_api_keeps_the_served_version(loop: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with http(loop, "admin") as admin, http(loop, "reader") as reader, http(loop, "curator") as curator:
        if not curator.get("/v1/feedback", params={"status": "accepted"}).json()["data"]:  # run on its own
            it = loop["items"][0]
            fb = curator.post("/v1/feedback", json={"question": it["question"], "corrected_answer": it["answer"],
                                                    "pmids": [it["pmid"]]}).json()
            admin.patch(f"/v1/feedback/{fb['id']}", json={"status": "accepted"}).raise_for_status()
        served = reader.get("/v1/adapters").json()["data"]
        (ours,) = [a for a in served if a["name"] == ADAPTER]
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        r = admin.post("/v1/retune", json={"adapter": ADAPTER, "min_examples": 1,
                                           "hyperparameters": {**HYPERPARAMETERS, "epochs": 1000}})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while not (job := admin.get(f"/v1/retune/{job_id}").json())["progress"].get("step"):
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        r = admin.delete(f"/v1/retune/{job_id}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled", r.text
        assert admin.delete(f"/v1/retune/{job_id}").status_code == 409
        assert job_id in [j["job_id"] for j in admin.get("/v1/retune").json()["data"]]
        assert admin.get("/v1/retune/job_nope").status_code == 404
        after = next(a for a in reader.get("/v1/adapters").json()["data"] if a["name"] == ADAPTER)
        assert after["current"] == ours["current"]
        assert len(after["versions"]) == len(ours["versions"])
        r = admin.post("/v1/retune", json={"adapter": ADAPTER, "hyperparameters": {"lora_r": 64}})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "hyperparameters.lora_r"


def _dataset(loop: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    ds_dir = loop["settings"].jobs_dir / job_id / "dataset"
    (path,) = ds_dir.glob("dataset-*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]
