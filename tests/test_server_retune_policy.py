"""Re-tune policies: when a policy is due (pure), a check starting a job through RetuneService (audited as
``system:policy``), the workbench's policy overriding the settings', and the server's background loop starting
a job by itself. The job process is replaced by a no-op (training is tested elsewhere)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from litestar.testing import TestClient

from finetune.jobs import JobRunner
from finetune.store import CorrectionStore, JobStore
from pubmind.audit import AuditLog
from pubmind.settings import RetunePolicy, Settings
from server.auth import ANONYMOUS
from server.retune.policy import DAY_S, PolicyService, PolicyStore, policy_due
from server.retune.service import RetuneService
from tests.fixtures_server import api_settings, closed_url

NOW = 1_800_000_000.0
NO_OP = (sys.executable, "-c", "pass")  # stands in for `python -m finetune.train`


def due(policy: RetunePolicy, accepted: list[float], last: float | None, active: bool = False) -> str | None:
    return policy_due(policy, accepted_at=accepted, last_job_at=last, active=active, now=NOW)


def test_due_after_n_new_corrections() -> None:
    assert due(RetunePolicy(after_corrections=2), [NOW - 50, NOW - 10, NOW - 5], last=NOW - 20) is not None


def test_not_due_below_n_new_corrections() -> None:
    assert due(RetunePolicy(after_corrections=3), [NOW - 50, NOW - 10, NOW - 5], last=NOW - 20) is None


def test_due_every_d_days_with_a_new_correction() -> None:
    assert due(RetunePolicy(every_days=7), [NOW - 10], last=NOW - 8 * DAY_S) is not None


def test_not_due_every_d_days_without_new_corrections() -> None:
    assert due(RetunePolicy(every_days=7), [NOW - 9 * DAY_S], last=NOW - 8 * DAY_S) is None


def test_not_due_before_d_days() -> None:
    assert due(RetunePolicy(every_days=7), [NOW - 10], last=NOW - 6 * DAY_S) is None


def test_not_due_while_a_job_runs() -> None:
    assert due(RetunePolicy(after_corrections=1), [NOW - 10], last=None, active=True) is None


def test_first_job_every_d_days() -> None:
    assert due(RetunePolicy(every_days=1), [NOW - 10], last=None) is not None


def test_policy_off_is_never_due() -> None:
    assert due(RetunePolicy(), [NOW - 10], last=None) is None


def accept(settings: Settings, n: int) -> None:
    store = CorrectionStore(settings.app_db)
    for i in range(n):
        store.add(question=f"q{i}?", corrected_answer="a [PMID:1].", pmids=[1], curator="c", status="accepted")
    store.close()


def test_check_starts_a_job_audited_as_system_policy(make_settings: Callable[..., Settings],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(JobRunner, "command", NO_OP)
    settings = make_settings(finetune={"min_examples": 2, "policies": {"onco": {"after_corrections": 2}}})
    settings.home.mkdir(parents=True, exist_ok=True)
    jobs, corrections, audit = JobStore(settings.app_db), CorrectionStore(settings.app_db), AuditLog(settings.app_db)
    store = PolicyStore(settings.app_db)
    service = PolicyService(settings, store, RetuneService(JobRunner(settings, jobs, corrections), jobs, audit), jobs,
                            corrections)
    try:
        accept(settings, 1)
        assert service.check() == []
        accept(settings, 1)
        started = service.check()
        assert len(started) == 1
        entry = audit.query(action="retune.start")[0]
        assert entry.key_id == "system:policy"
        assert entry.target == started[0]
        assert "policies" not in jobs.get(started[0]).hyperparameters  # the server's policy, not the job's
    finally:
        for s in (jobs, corrections, audit, store):
            s.close()


def test_workbench_policy_overrides_the_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(finetune={"policies": {"onco": {"after_corrections": 2}}})
    settings.home.mkdir(parents=True, exist_ok=True)
    jobs, corrections, audit = JobStore(settings.app_db), CorrectionStore(settings.app_db), AuditLog(settings.app_db)
    store = PolicyStore(settings.app_db)
    service = PolicyService(settings, store, RetuneService(JobRunner(settings, jobs, corrections), jobs, audit), jobs,
                            corrections)
    try:
        service.set("onco", RetunePolicy(every_days=3), by=ANONYMOUS)
        (view,) = service.views()
        assert (view.after_corrections, view.every_days, view.source) == (None, 3.0, "workbench:anonymous")
    finally:
        for s in (jobs, corrections, audit, store):
            s.close()


@pytest.mark.integration
def test_server_loop_starts_a_job_by_itself(tmp_path: Path, tiny_model_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from server.app import create_app

    monkeypatch.setattr(JobRunner, "command", NO_OP)
    settings = api_settings(tmp_path / "home", tiny_model_dir, closed_url())
    settings = settings.model_copy(update={"finetune": settings.finetune.model_copy(update={
        "min_examples": 1, "policy_check_seconds": 0.2, "policies": {"onco": RetunePolicy(after_corrections=1)}})})
    with TestClient(create_app(settings)):
        accept(settings, 1)
        jobs = JobStore(settings.app_db)
        deadline = time.monotonic() + 20
        while not jobs.find(adapter="onco") and time.monotonic() < deadline:
            time.sleep(0.2)
        found = jobs.find(adapter="onco")
        jobs.close()
    assert [j.created_by for j in found] == ["policy"]
