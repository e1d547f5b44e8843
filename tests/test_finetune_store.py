"""finetune.store: answers with provenance (AnswerStore), corrections and their review (CorrectionStore),
re-tune job state (JobStore), all in one app database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.store import AnswerStore, CorrectionStore, JobStore, job_process_alive
from pubmind.errors import Conflict, InvalidInput, NotFound


@pytest.fixture()
def answers(tmp_path: Path) -> AnswerStore:
    return AnswerStore(tmp_path / "app.sqlite")


@pytest.fixture()
def corrections(tmp_path: Path) -> CorrectionStore:
    return CorrectionStore(tmp_path / "app.sqlite")


@pytest.fixture()
def jobs(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "app.sqlite")


def test_correction_carries_the_answers_provenance(answers: AnswerStore, corrections: CorrectionStore) -> None:
    aid = answers.record("Q?", "A [PMID:1]", "onco", "onco@v2", "idx#g3", [(1, 0.9), (2, 0.5)],
                         [{"pmid": 1, "supported": True}], {"total": 12.5})
    ans = answers.get(aid)
    assert (ans.retrieved, ans.adapter_version, ans.index_version) == ([(1, 0.9), (2, 0.5)], "onco@v2", "idx#g3")
    fb = corrections.add(question="Q?", corrected_answer="B [PMID:2]", pmids=[2], curator="cur1", answer=ans,
                         rating=2, note="wrong paper")
    assert (fb.status, fb.curator, fb.answer_id) == ("pending", "cur1", aid)
    assert fb.provenance["original_answer"] == "A [PMID:1]"
    assert fb.provenance["retrieved_pmids"] == [1, 2]
    assert (fb.provenance["adapter_version"], fb.provenance["model"]) == ("onco@v2", "onco")
    assert corrections.get(fb.id) == fb


def test_answer_keeps_requester_filters_sampling_conversation_and_stack(answers: AnswerStore) -> None:
    aid = answers.record("Q?", "A", "base", None, None, [], [], {}, requester="key:7",
                         filters={"year_from": 2010, "mesh": ["Dementia"]},
                         sampling={"temperature": 0.0, "max_tokens": 64, "seed": 3},
                         conversation_sha256="ab" * 32, stack={"torch": "2.13.0", "vllm": "0.32.0"})
    got = answers.get(aid)
    assert got.requester == "key:7"
    assert got.filters == {"year_from": 2010, "mesh": ["Dementia"]}
    assert got.sampling == {"temperature": 0.0, "max_tokens": 64, "seed": 3}
    assert got.conversation_sha256 == "ab" * 32
    assert got.stack == {"torch": "2.13.0", "vllm": "0.32.0"}


def test_an_older_answers_table_gains_the_provenance_columns(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute("CREATE TABLE answers (id TEXT PRIMARY KEY, created_at REAL NOT NULL, question TEXT NOT NULL, "
               "answer TEXT NOT NULL, model TEXT NOT NULL, adapter_version TEXT, index_version TEXT, "
               "retrieved TEXT NOT NULL, citations TEXT NOT NULL, timings_ms TEXT NOT NULL)")
    db.execute("INSERT INTO answers VALUES ('ans_old', 1.0, 'Q', 'A', 'base', NULL, NULL, '[]', '[]', '{}')")
    db.commit()
    db.close()
    store = AnswerStore(tmp_path / "old.sqlite")
    old = store.get("ans_old")
    new = store.get(store.record("Q2", "A2", "base", None, None, [], [], {}, requester="key:1"))
    store.close()
    assert old.requester is None
    assert old.stack is None
    assert new.requester == "key:1"


def test_unknown_answer_id_is_not_found(answers: AnswerStore) -> None:
    with pytest.raises(NotFound, match="answer_id 'ans_nope'"):
        answers.get("ans_nope")


def test_review_and_listing(corrections: CorrectionStore) -> None:
    a = corrections.add(question="Q1", corrected_answer="A1", pmids=[1], curator="c")
    b = corrections.add(question="Q2", corrected_answer="A2", pmids=[2], curator="c")
    assert [f.id for f in corrections.find("pending")] == [a.id, b.id]
    done = corrections.set_status(a.id, "accepted", "admin1")
    assert (done.status, done.reviewer) == ("accepted", "admin1")
    assert done.reviewed_at is not None
    corrections.set_status(b.id, "rejected", "admin1")
    assert [f.id for f in corrections.accepted()] == [a.id]
    assert corrections.count("rejected") == 1
    assert [f.id for f in corrections.find()] == [a.id, b.id]
    with pytest.raises(InvalidInput, match=r"status must be one of .* got 'done'"):
        corrections.set_status(a.id, "done", "x")
    with pytest.raises(NotFound, match="fb_missing"):
        corrections.set_status("fb_missing", "accepted", "x")


def test_stores_share_one_database(tmp_path: Path) -> None:
    """Each store creates only its own tables; all of them work over one file opened by each in turn."""
    db = tmp_path / "app.sqlite"
    with JobStore(db) as jobs:
        job = jobs.create("onco", {}, 1, "admin")
    with CorrectionStore(db) as corrections:
        corrections.add(question="Q", corrected_answer="A", pmids=[], curator="c", status="accepted")
    with JobStore(db) as jobs, CorrectionStore(db) as corrections:
        assert jobs.get(job.id).adapter == "onco"
        assert corrections.count("accepted") == 1


def test_one_active_job_per_adapter(jobs: JobStore) -> None:
    j = jobs.create("onco", {"epochs": 1}, 2, "admin")
    with pytest.raises(Conflict, match=f"already has an active re-tune job {j.id}"):
        jobs.create("onco", {}, 2, "admin")
    other = jobs.create("cardio", {}, 2, "admin")  # another adapter is independent
    assert other.status == "queued"
    jobs.update(j.id, status="running", progress={"step": 1, "loss": 2.5})
    j2 = jobs.update(j.id, progress={"step": 2})
    assert j2.progress == {"stage": "queued", "step": 2, "loss": 2.5}  # merged, not replaced
    jobs.update(j.id, expect=("running",), status="succeeded", result={"version": 1})
    with pytest.raises(Conflict, match="is 'succeeded'"):
        jobs.update(j.id, expect=("running",), status="failed")
    assert jobs.create("onco", {}, 2, "admin").status == "queued"  # finished: a new one may start
    with pytest.raises(InvalidInput, match=r"unknown fields \['colour'\]"):
        jobs.update(j.id, colour="red")


def test_interrupted_jobs_are_reported_failed(jobs: JobStore, tmp_path: Path) -> None:
    dead = jobs.create("a", {}, 1, "admin")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    jobs.update(dead.id, status="running", pid=proc.pid)
    alive = jobs.create("b", {}, 1, "admin")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", alive.id])
    try:
        jobs.update(alive.id, status="running", pid=sleeper.pid)
        assert job_process_alive(sleeper.pid, alive.id)
        assert not job_process_alive(sleeper.pid, dead.id)  # a recycled pid is not the job's process
        reopened = JobStore(tmp_path / "app.sqlite")  # as after a server restart
        assert reopened.fail_interrupted() == [dead.id]
        failed = reopened.get(dead.id)
        assert failed.status == "failed"
        assert "interrupted" in (failed.error or "")
        assert reopened.get(alive.id).status == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
