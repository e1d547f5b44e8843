"""Retention: old answers (not those a correction cites), old finished job folders, oversized logs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from finetune.store import AnswerStore, CorrectionStore, JobStore
from pubmind.settings import Settings
from server.retention import apply_retention, rotate_log

DAY = 86400.0


def answer(store: AnswerStore, question: str) -> str:
    return store.record(question=question, answer="a [PMID:1]", model="base", adapter_version=None,
                        index_version=None, retrieved=[(1, 0.5)], citations=[], timings_ms={})


def test_old_answers_go_unless_a_correction_cites_them(settings: Settings) -> None:
    answers, corrections = AnswerStore(settings.app_db), CorrectionStore(settings.app_db)
    old, kept_by_correction, new = answer(answers, "old"), answer(answers, "cited"), answer(answers, "new")
    corrections.add(question="cited", corrected_answer="b [PMID:1]", pmids=[1], curator="c",
                    answer=answers.get(kept_by_correction))
    now = time.time() + settings.retention.answers_days * DAY + 1  # the three answers are now too old
    answers._db.execute("UPDATE answers SET created_at = ? WHERE id = ?", (time.time() + 2 * DAY * 365 * 10, new))
    out = apply_retention(settings, now=now)
    assert out["answers_deleted"] == 1
    left = {r["id"] for r in answers._query("SELECT id FROM answers")}
    assert left == {kept_by_correction, new}
    assert old not in left
    answers.close()
    corrections.close()


def test_old_finished_job_folders_go_active_and_recent_stay(settings: Settings) -> None:
    jobs = JobStore(settings.app_db)
    done = jobs.create("onco", {}, 1, "admin")
    jobs.update(done.id, status="failed", finished_at=time.time() - (settings.retention.jobs_days + 1) * DAY)
    recent = jobs.create("cardio", {}, 1, "admin")
    jobs.update(recent.id, status="succeeded", finished_at=time.time())
    active = jobs.create("neuro", {}, 1, "admin")
    for j in (done, recent, active):
        (settings.jobs_dir / j.id).mkdir(parents=True)
        (settings.jobs_dir / j.id / "log.txt").write_text("x")
    out = apply_retention(settings, now=time.time())
    assert out["job_folders_deleted"] == [done.id]
    assert sorted(p.name for p in settings.jobs_dir.iterdir()) == sorted([recent.id, active.id])
    jobs.close()


def test_logs_rotate_keeping_n_backups(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    for i in range(5):
        log.write_bytes(f"round {i} ".encode() * 100)
        assert rotate_log(log, max_bytes=10, backups=2)
    assert log.read_bytes() == b""
    assert (tmp_path / "vllm.log.1").read_bytes().startswith(b"round 4")
    assert (tmp_path / "vllm.log.2").read_bytes().startswith(b"round 3")
    assert not (tmp_path / "vllm.log.3").exists()
    assert not rotate_log(log, max_bytes=10, backups=2)  # empty now: under the limit


def test_a_writer_in_append_mode_keeps_writing_after_rotation(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    with open(log, "ab") as writer:  # what the supervisor hands vLLM
        writer.write(b"x" * 1000)
        writer.flush()
        rotate_log(log, max_bytes=10, backups=1)
        writer.write(b"after")
        writer.flush()
    assert log.read_bytes() == b"after"


def test_cli_retention(cli: Any, settings: Settings) -> None:
    settings.logs_dir.mkdir(parents=True)
    (settings.logs_dir / "vllm.log").write_bytes(b"x" * (int(settings.retention.log_max_mib * 2**20) + 1))
    r = cli("retention")
    assert r.code == 0, r.err
    assert json.loads(r.out)["logs_rotated"] == ["vllm.log"]
