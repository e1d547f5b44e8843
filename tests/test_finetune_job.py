"""A re-tune job process for real (tiny model, real 50-article index), without vLLM: the gate falls back to
transformers+PEFT and says so; a failing or cancelled job leaves the registry and the served version as they
were."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from finetune.dataset import read_dataset
from finetune.jobs import JobRunner
from finetune.registry import AdapterRegistry
from finetune.store import CorrectionStore, JobStore
from pubmind.audit import AuditLog
from tests.fixtures_finetune import private_home
from tests.fixtures_server import closed_url, make_settings

pytestmark = [pytest.mark.integration]

FAST = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "learning_rate": 0.01, "batch_size": 1, "epochs": 30, "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def env(server_home: Path, tiny_model_dir: Path, shared_data: Path,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = private_home(server_home, tmp_path_factory.mktemp("ft-job") / "home")
    settings = make_settings(home, llm={"model": str(tiny_model_dir), "vllm_url": closed_url()},
                             retrieval={"context_tokens": 96})
    store = CorrectionStore(settings.app_db)
    data = json.loads((shared_data / "pubmedqa/data/ori_pqal.json").read_text())
    for pmid, v in list(data.items())[:4]:
        store.add(question=v["QUESTION"], corrected_answer=f"{v['final_decision']} [PMID:{pmid}]",
                           pmids=[int(pmid)], curator="cur", status="accepted")
    return {"settings": settings, "runner": JobRunner(settings, JobStore(settings.app_db), store, train_threads=1)}


def test_job_trains_registers_and_gates_locally_when_vllm_is_down(env: dict[str, Any]) -> None:
    runner, settings = env["runner"], env["settings"]
    job = runner.submit("local", hyperparameters=FAST, min_examples=4, created_by="admin")
    done = runner.wait(job.id, timeout=400, poll=0.5)
    assert done.status == "succeeded", (done.error, (settings.jobs_dir / job.id / "log.txt").read_text()[-3000:])
    r = done.result
    assert r["version"] == 1 and r["lora_name"] == "local@v1"
    assert r["training"]["steps"] == 30 * r["dataset"]["train"] and r["training"]["tokens_per_second"] > 0
    ev = r["evaluation"]
    assert ev["backend"].startswith("transformers+peft") and "vLLM not usable" in ev["backend"]
    assert ev["baseline"] == "base" and ev["heldout"] == r["dataset"]["heldout"] >= 1
    assert set(ev["candidate_metrics"]) >= {"citation_validity", "citation_recall", "answer_f1", "rouge_l"}
    reg = AdapterRegistry(settings.adapters_dir)
    v1 = reg.get("local", 1)
    assert v1.manifest["dataset_hash"] == r["dataset"]["hash"] == read_dataset(r["dataset"]["path"]).hash
    assert v1.manifest["evaluation"]["promote"] == ev["promote"] and v1.manifest["hyperparameters"]["epochs"] == 30
    assert (Path(v1.path) / "adapter_config.json").is_file() and (Path(v1.path) / "adapter_model.safetensors").is_file()
    # it learned its corrections (the base model did not), so it is promoted; vLLM being down is reported
    assert ev["trained_sample"] == r["dataset"]["train"]
    assert ev["candidate_trained_metrics"]["answer_f1"] > ev["baseline_trained_metrics"]["answer_f1"] + 0.5
    assert ev["promote"] and r["promoted"], ev["reasons"]
    assert reg.resolve("local").version == 1 and "not reachable" in r["served"]["vllm"]
    audit = AuditLog(settings.app_db)
    rows = audit.query(key_id=f"system:job:{job.id}")
    audit.close()
    assert [row.action for row in rows] == ["retune.finish", "adapter.promote"]
    assert rows[1].after["current"] == 1


def test_gate_rejects_an_undertrained_candidate(env: dict[str, Any]) -> None:
    runner, settings = env["runner"], env["settings"]
    reg = AdapterRegistry(settings.adapters_dir)
    assert reg.resolve("local").version == 1
    job = runner.submit("local", hyperparameters={**FAST, "epochs": 1}, min_examples=4, created_by="admin")
    done = runner.wait(job.id, timeout=400, poll=0.5)
    assert done.status == "succeeded", done.error
    ev = done.result["evaluation"]
    assert ev["baseline"] == "local@v1" and not ev["promote"] and done.result["promoted"] is False
    assert any(x.startswith("trained-on answer_f1") and "< baseline" in x for x in ev["reasons"]), ev["reasons"]
    assert reg.resolve("local").version == 1  # still served
    v2 = reg.get("local", 2)
    assert v2.manifest["evaluation"]["promote"] is False and not v2.current


def test_failed_and_cancelled_jobs_leave_the_served_version_alone(env: dict[str, Any]) -> None:
    runner, settings = env["runner"], env["settings"]
    reg = AdapterRegistry(settings.adapters_dir)
    before = [v.version for v in reg.versions("local")]
    served = reg.resolve("local").version

    bad = runner.submit("local", hyperparameters={**FAST, "target_modules": ["no_such_module"]}, created_by="admin")
    failed = runner.wait(bad.id, timeout=300, poll=0.5)
    assert failed.status == "failed" and "no_such_module" in failed.error
    assert [v.version for v in reg.versions("local")] == before and reg.resolve("local").version == served

    slow = runner.submit("local", hyperparameters={**FAST, "epochs": 500}, created_by="admin")
    deadline = time.monotonic() + 300
    while (j := runner.get(slow.id)).progress.get("stage") != "training" or not j.progress.get("step"):
        assert j.status == "running" or j.status == "queued", (j.status, j.error)
        assert time.monotonic() < deadline
        time.sleep(0.5)
    cancelled = runner.cancel(slow.id)
    assert cancelled.status == "cancelled"
    time.sleep(1.0)
    assert runner.get(slow.id).status == "cancelled"  # the dying process did not overwrite it
    assert [v.version for v in reg.versions("local")] == before and reg.resolve("local").version == served
