"""finetune.train: the machine-wide training slots (issue 10 item 10: two re-tunes of different adapters must
not train at once beside vLLM), the job's command line, and a re-tune job process for real (integration: tiny
model, real 50-article index, no vLLM): the gate falls back to transformers+PEFT and says so; a failing or
cancelled job leaves the registry and the served version as they were."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import finetune.train as train
from finetune.dataset import read_dataset
from finetune.jobs import JobRunner
from finetune.registry import AdapterRegistry
from finetune.store import CorrectionStore, JobStore
from finetune.train import parse_args, training_slot, try_slot
from pubmind.audit import AuditLog
from tests.conftest import settings_at
from tests.fixtures_finetune import private_home
from tests.fixtures_server import closed_url


def test_one_slot_by_default_across_processes(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from finetune.train import try_slot; "
        f"s = try_slot(Path({str(tmp_path)!r}), 1); print(s is not None, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "True"
        assert try_slot(tmp_path, 1) is None  # another adapter's job holds the only slot
        second = try_slot(tmp_path, 2)
        assert second is not None  # max_concurrent_trainings=2 allows a second one
        second.close()
    finally:
        holder.kill()
        holder.wait()
    again = try_slot(tmp_path, 1)  # freed when its process died
    assert again is not None
    again.close()


def test_a_job_waits_for_the_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "SLOT_POLL_SECONDS", 0.05)
    held = try_slot(tmp_path, 1)
    assert held is not None
    waited: list[float] = []
    threading.Timer(0.3, held.close).start()
    t0 = time.monotonic()
    with training_slot(tmp_path, 1, on_wait=lambda: waited.append(time.monotonic())):
        assert time.monotonic() - t0 >= 0.3
    assert len(waited) == 1
    free = try_slot(tmp_path, 1)  # released after the block
    assert free is not None
    free.close()


def test_command_line() -> None:
    args = parse_args(["--job_dir", "/jobs/job_1", "--num_threads", "2"])
    assert (args.job_dir, args.num_threads) == ("/jobs/job_1", 2)
    assert parse_args(["--job_dir", "x"]).num_threads == 0
    with pytest.raises(SystemExit):
        parse_args([])


# ---- a job process for real ----------------------------------------------------------------------------
FAST = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "learning_rate": 0.01, "batch_size": 1, "epochs": 30, "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def env(server_home: Path, tiny_model_dir: Path, shared_data: Path,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = private_home(server_home, tmp_path_factory.mktemp("ft-job") / "home")
    settings = settings_at(home, llm={"model": str(tiny_model_dir), "vllm_url": closed_url()},
                             retrieval={"context_tokens": 96})
    store = CorrectionStore(settings.app_db)
    data = json.loads((shared_data / "pubmedqa/data/ori_pqal.json").read_text())
    for pmid, v in list(data.items())[:4]:
        store.add(question=v["QUESTION"], corrected_answer=f"{v['final_decision']} [PMID:{pmid}]",
                           pmids=[int(pmid)], curator="cur", status="accepted")
    return {"settings": settings, "runner": JobRunner(settings, JobStore(settings.app_db), store, train_threads=1)}


@pytest.mark.integration
def test_job_trains_registers_and_gates_locally_when_vllm_is_down(env: dict[str, Any]) -> None:
    runner, settings = env["runner"], env["settings"]
    job = runner.submit("local", hyperparameters=FAST, min_examples=4, created_by="admin")
    done = runner.wait(job.id, timeout=400, poll=0.5)
    assert done.status == "succeeded", (done.error, (settings.jobs_dir / job.id / "log.txt").read_text()[-3000:])
    r = done.result
    assert r["version"] == 1
    assert r["lora_name"] == "local@v1"
    assert r["training"]["steps"] == 30 * r["dataset"]["train"]
    assert r["training"]["tokens_per_second"] > 0
    assert [step for step, _ in r["loss_history"]] == list(range(1, r["training"]["steps"] + 1))  # the loss curve
    ev = r["evaluation"]
    assert ev["backend"].startswith("transformers+peft")
    assert "vLLM not usable" in ev["backend"]
    assert ev["baseline"] == "base"
    assert ev["heldout"] == r["dataset"]["heldout"] >= 1
    assert set(ev["candidate_metrics"]) >= {"citation_validity", "citation_recall", "answer_f1", "rouge_l"}
    reg = AdapterRegistry(settings.adapters_dir)
    v1 = reg.get("local", 1)
    assert v1.manifest["dataset_hash"] == r["dataset"]["hash"] == read_dataset(r["dataset"]["path"]).hash
    assert v1.manifest["evaluation"]["promote"] == ev["promote"]
    assert v1.manifest["hyperparameters"]["epochs"] == 30
    assert v1.manifest["stack"]["transformers"] == importlib.metadata.version("transformers")
    assert (Path(v1.path) / "adapter_config.json").is_file()
    assert (Path(v1.path) / "adapter_model.safetensors").is_file()
    # it learned its corrections (the base model did not), so it is promoted; vLLM being down is reported
    assert ev["trained_sample"] == r["dataset"]["train"]
    assert ev["candidate_trained_metrics"]["answer_f1"] > ev["baseline_trained_metrics"]["answer_f1"] + 0.5
    assert ev["promote"], ev["reasons"]
    assert r["promoted"], ev["reasons"]
    assert reg.resolve("local").version == 1
    assert "not reachable" in r["served"]["vllm"]
    audit = AuditLog(settings.app_db)
    rows = audit.query(key_id=f"system:job:{job.id}")
    audit.close()
    assert [row.action for row in rows] == ["retune.finish", "adapter.promote"]
    assert rows[1].after["current"] == 1


@pytest.mark.integration
def test_gate_rejects_an_undertrained_candidate(env: dict[str, Any]) -> None:
    runner, settings = env["runner"], env["settings"]
    reg = AdapterRegistry(settings.adapters_dir)
    assert reg.resolve("local").version == 1
    job = runner.submit("local", hyperparameters={**FAST, "epochs": 1}, min_examples=4, created_by="admin")
    done = runner.wait(job.id, timeout=400, poll=0.5)
    assert done.status == "succeeded", done.error
    ev = done.result["evaluation"]
    assert ev["baseline"] == "local@v1"
    assert not ev["promote"]
    assert done.result["promoted"] is False
    assert any(x.startswith("trained-on answer_f1") and "< baseline" in x for x in ev["reasons"]), ev["reasons"]
    assert reg.resolve("local").version == 1  # still served
    v2 = reg.get("local", 2)
    assert v2.manifest["evaluation"]["promote"] is False
    assert not v2.current


@pytest.mark.integration
def test_failed_and_cancelled_jobs_leave_the_served_version_alone(env: dict[str, Any]) -> None:
    runner, settings = env["runner"], env["settings"]
    reg = AdapterRegistry(settings.adapters_dir)
    before = [v.version for v in reg.versions("local")]
    served = reg.resolve("local").version

    bad = runner.submit("local", hyperparameters={**FAST, "target_modules": ["no_such_module"]}, created_by="admin")
    failed = runner.wait(bad.id, timeout=300, poll=0.5)
    assert failed.status == "failed"
    assert "no_such_module" in failed.error
    assert [v.version for v in reg.versions("local")] == before
    assert reg.resolve("local").version == served

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
    assert [v.version for v in reg.versions("local")] == before
    assert reg.resolve("local").version == served
