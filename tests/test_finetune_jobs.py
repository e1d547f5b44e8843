"""Job runner: validation, one job per adapter, cancel kills the process, crashes and restarts are reported
as failures; deployment planning against vLLM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from finetune.jobs import JobRunner, resolve_hyperparameters
from finetune.registry import AdapterRegistry
from finetune.store import CorrectionStore, JobStore, job_process_alive
from generation.deploy import DeployPlan, plan_deploy
from pubmind.errors import Conflict, InvalidInput
from pubmind.settings import Settings

SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")


@pytest.fixture()
def runner(settings: Settings) -> JobRunner:
    corrections = CorrectionStore(settings.app_db)
    for i in range(2):
        corrections.add(question=f"Q{i}?", corrected_answer=f"A{i}", pmids=[], curator="c", status="accepted")
    r = JobRunner(settings, JobStore(settings.app_db), corrections)
    r.command = SLEEPER
    return r


def test_hyperparameter_overrides_are_validated(settings: Settings) -> None:
    hp = resolve_hyperparameters(settings, {"epochs": 2, "learning_rate": 0.01})
    assert (hp.epochs, hp.learning_rate, hp.lora_r) == (2, 0.01, settings.finetune.lora_r)
    with pytest.raises(InvalidInput, match=r"unknown keys \['tolerance'\]"):
        resolve_hyperparameters(settings, {"tolerance": 1.0})  # policy, not a hyperparameter
    with pytest.raises(InvalidInput, match="learning_rate=-1"):
        resolve_hyperparameters(settings, {"learning_rate": -1})
    with pytest.raises(InvalidInput, match=r"lora_r=64 exceeds llm\.max_lora_rank=8"):
        resolve_hyperparameters(settings, {"lora_r": 64})


def test_submit_needs_enough_accepted_corrections(runner: JobRunner) -> None:
    with pytest.raises(Conflict, match="2 accepted corrections, a re-tune needs min_examples=5"):
        runner.submit("onco", min_examples=5, created_by="admin")
    with pytest.raises(InvalidInput, match="adapter must be"):
        runner.submit("no spaces", created_by="admin")
    with pytest.raises(InvalidInput, match="min_examples must be an integer >= 1, got 0"):
        runner.submit("onco", min_examples=0, created_by="admin")


def test_cancel_kills_the_job_process(runner: JobRunner, settings: Settings) -> None:
    job = runner.submit("onco", hyperparameters={"epochs": 1}, created_by="admin1")
    assert job.pid
    assert job_process_alive(job.pid, job.id)
    spec = json.loads((settings.jobs_dir / job.id / "job.json").read_text())
    assert spec["hyperparameters"]["epochs"] == 1
    assert spec["settings"]["home"] == str(settings.home)
    with pytest.raises(Conflict, match="already has an active re-tune job"):
        runner.submit("onco", created_by="admin1")
    done = runner.cancel(job.id)
    assert done.status == "cancelled"
    assert done.finished_at
    assert not job_process_alive(job.pid, job.id)
    with pytest.raises(Conflict, match="already finished with status 'cancelled'"):
        runner.cancel(job.id)
    again = runner.submit("onco", created_by="admin1")  # the adapter is free again
    assert runner.cancel(again.id).status == "cancelled"


def test_a_crashed_job_process_is_reported_failed(runner: JobRunner) -> None:
    runner.command = (sys.executable, "-c", "import sys; sys.exit(3)")
    job = runner.submit("onco", created_by="admin")
    done = runner.wait(job.id, timeout=30, poll=0.1)
    assert done.status == "failed"
    assert "exited with code 3" in done.error


def test_restart_reports_a_running_job_whose_process_died_as_failed(settings: Settings) -> None:
    import subprocess

    store = JobStore(settings.app_db)
    job = store.create("onco", {}, 1, "admin")
    proc = subprocess.Popen([*SLEEPER, job.id])
    store.update(job.id, status="running", pid=proc.pid)
    proc.kill()  # the server and its job process die; nobody records it
    proc.wait()
    restarted = JobRunner(settings, JobStore(settings.app_db), CorrectionStore(settings.app_db))
    assert restarted.recover() == [job.id]
    failed = restarted.get(job.id)
    assert failed.status == "failed"
    assert "interrupted" in failed.error
    assert restarted.recover() == []


def test_plan_deploy(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "adapters")
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    for _ in range(3):
        reg.create_version("onco", src, {})
    for v in (1, 2, 3):
        reg.promote("onco", v)
    plan = plan_deploy(reg, "onco", 2, {"base", "onco@v1", "onco@v2", "cardio@v1"})
    assert plan == DeployPlan(load=["onco@v3"], unload=["onco@v1"])  # keep v3 (current) and v2 (previous)
    reg.rollback("onco")
    assert plan_deploy(reg, "onco", 2, {"onco@v2", "onco@v3"}) == DeployPlan(load=[], unload=["onco@v3"])


def test_a_remote_vllm_key_reaches_the_job_but_not_its_folder(settings: Settings) -> None:
    """Issue 10 item 5: the key for a remote --vllm-url goes to the job process by environment, never into
    job.json (which sits in the jobs folder with the logs)."""
    secret = "remote-vllm-key-123"
    keyed = settings.model_copy(update={"llm": settings.llm.model_copy(update={"vllm_api_key": secret})})
    corrections = CorrectionStore(settings.app_db)
    corrections.add(question="Q?", corrected_answer="A", pmids=[], curator="c", status="accepted")
    r = JobRunner(keyed, JobStore(settings.app_db), corrections)
    r.command = (sys.executable, "-c", "import os; print('key=' + os.environ['PUBMIND_LLM__VLLM_API_KEY'])")
    job = r.wait(r.submit("onco", min_examples=1, created_by="admin").id, timeout=30, poll=0.1)
    job_dir = settings.jobs_dir / job.id
    assert secret not in (job_dir / "job.json").read_text()
    assert f"key={secret}" in (job_dir / "log.txt").read_text()
