"""FeedbackStore: answers with provenance, feedback CRUD and review, re-tune job state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finetune.store import FeedbackStore, job_process_alive
from pubmind.errors import Conflict, InvalidInput, NotFound


@pytest.fixture()
def store(tmp_path: Path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "app.sqlite")


def test_feedback_carries_the_answers_provenance(store: FeedbackStore) -> None:
    aid = store.record_answer("Q?", "A [PMID:1]", "onco", "onco@v2", "idx#g3", [(1, 0.9), (2, 0.5)],
                              [{"pmid": 1, "supported": True}], {"total": 12.5})
    ans = store.get_answer(aid)
    assert (ans.retrieved, ans.adapter_version, ans.index_version) == ([(1, 0.9), (2, 0.5)], "onco@v2", "idx#g3")
    fb = store.add_feedback(question="Q?", corrected_answer="B [PMID:2]", pmids=[2], curator="cur1",
                            answer_id=aid, rating=2, note="wrong paper")
    assert fb.status == "pending" and fb.curator == "cur1"
    assert fb.provenance["original_answer"] == "A [PMID:1]"
    assert fb.provenance["retrieved_pmids"] == [1, 2]
    assert fb.provenance["adapter_version"] == "onco@v2" and fb.provenance["model"] == "onco"
    assert store.get_feedback(fb.id) == fb


def test_unknown_answer_id_is_not_found(store: FeedbackStore) -> None:
    with pytest.raises(NotFound, match="answer_id 'ans_nope'"):
        store.add_feedback(question="Q", corrected_answer="A", pmids=[], curator="c", answer_id="ans_nope")


def test_review_and_listing(store: FeedbackStore) -> None:
    a = store.add_feedback(question="Q1", corrected_answer="A1", pmids=[1], curator="c")
    b = store.add_feedback(question="Q2", corrected_answer="A2", pmids=[2], curator="c")
    assert [f.id for f in store.list_feedback("pending")] == [a.id, b.id]
    done = store.set_status(a.id, "accepted", "admin1")
    assert (done.status, done.reviewer) == ("accepted", "admin1") and done.reviewed_at
    store.set_status(b.id, "rejected", "admin1")
    assert [f.id for f in store.accepted()] == [a.id]
    assert store.count_feedback("rejected") == 1
    assert [f.id for f in store.list_feedback()] == [a.id, b.id]
    with pytest.raises(InvalidInput, match=r"status must be one of .* got 'done'"):
        store.set_status(a.id, "done", "x")
    with pytest.raises(NotFound, match="fb_missing"):
        store.set_status("fb_missing", "accepted", "x")


def test_one_active_job_per_adapter(store: FeedbackStore) -> None:
    j = store.create_job("onco", {"epochs": 1}, 2, "admin")
    with pytest.raises(Conflict, match=f"already has an active re-tune job {j.id}"):
        store.create_job("onco", {}, 2, "admin")
    other = store.create_job("cardio", {}, 2, "admin")  # another adapter is independent
    assert other.status == "queued"
    store.update_job(j.id, status="running", progress={"step": 1, "loss": 2.5})
    j2 = store.update_job(j.id, progress={"step": 2})
    assert j2.progress == {"stage": "queued", "step": 2, "loss": 2.5}  # merged, not replaced
    store.update_job(j.id, expect=("running",), status="succeeded", result={"version": 1})
    with pytest.raises(Conflict, match="is 'succeeded'"):
        store.update_job(j.id, expect=("running",), status="failed")
    assert store.create_job("onco", {}, 2, "admin").status == "queued"  # finished: a new one may start


def test_interrupted_jobs_are_reported_failed(store: FeedbackStore, tmp_path: Path) -> None:
    dead = store.create_job("a", {}, 1, "admin")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store.update_job(dead.id, status="running", pid=proc.pid)
    alive = store.create_job("b", {}, 1, "admin")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", alive.id])
    try:
        store.update_job(alive.id, status="running", pid=sleeper.pid)
        assert job_process_alive(sleeper.pid, alive.id)
        assert not job_process_alive(sleeper.pid, dead.id)  # a recycled pid is not the job's process
        reopened = FeedbackStore(tmp_path / "app.sqlite")  # as after a server restart
        assert reopened.fail_interrupted() == [dead.id]
        failed = reopened.get_job(dead.id)
        assert failed.status == "failed" and "interrupted" in failed.error
        assert reopened.get_job(alive.id).status == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
