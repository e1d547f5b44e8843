"""Retention: nothing under the home grows without bound by default (``settings.retention``).

* answers older than ``answers_days`` are deleted, except those a correction refers to;
* folders of finished re-tune jobs older than ``jobs_days`` are deleted (the registry keeps every adapter);
* logs under ``home/logs`` over ``log_max_mib`` are rotated copy-then-truncate (the vLLM process keeps its
  log open in append mode, so truncating in place is safe), keeping ``log_backups`` copies.

``pubmind serve`` applies it at start-up and every ``interval_hours``; ``pubmind retention`` applies it now.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from finetune.store import ACTIVE_JOB_STATUSES, AnswerStore, Job, JobStore
from pubmind.errors import NotFound
from pubmind.settings import Settings

log = logging.getLogger("pubmind.retention")
DAY = 86400.0


def rotate_log(path: Path, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` if it is larger than ``max_bytes``: NAME.1 -> NAME.2 ... (the oldest dropped), a copy of
    NAME becomes NAME.1, then NAME is truncated. True when rotated."""
    assert backups >= 1, backups
    if not path.is_file() or path.stat().st_size <= max_bytes:
        return False
    oldest = path.with_name(f"{path.name}.{backups}")
    oldest.unlink(missing_ok=True)
    for i in range(backups - 1, 0, -1):
        src = path.with_name(f"{path.name}.{i}")
        if src.exists():
            os.replace(src, path.with_name(f"{path.name}.{i + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as f:
        f.truncate(0)
    return True


def apply_retention(settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """Apply ``settings.retention`` once; returns what was removed."""
    r = settings.retention
    now = time.time() if now is None else now
    out: dict[str, Any] = {"answers_deleted": 0, "job_folders_deleted": [], "logs_rotated": []}
    if settings.app_db.exists():
        answers = AnswerStore(settings.app_db)
        try:
            out["answers_deleted"] = answers.delete_before(now - r.answers_days * DAY)
        finally:
            answers.close()
    if settings.jobs_dir.is_dir():
        jobs = JobStore(settings.app_db)
        try:
            cutoff = now - r.jobs_days * DAY
            for folder in sorted(p for p in settings.jobs_dir.iterdir() if p.is_dir()):
                try:
                    job: Job | None = jobs.get(folder.name)
                except NotFound:  # a folder with no job row: judge it by its age alone
                    job = None
                if job is not None and (job.status in ACTIVE_JOB_STATUSES or (job.finished_at or now) >= cutoff):
                    continue
                if job is None and folder.stat().st_mtime >= cutoff:
                    continue
                shutil.rmtree(folder)
                out["job_folders_deleted"].append(folder.name)
        finally:
            jobs.close()
    if settings.logs_dir.is_dir():
        max_bytes = int(r.log_max_mib * 2**20)
        for path in sorted(settings.logs_dir.glob("*.log")):
            if rotate_log(path, max_bytes, r.log_backups):
                out["logs_rotated"].append(path.name)
    log.info("retention: %s", out)
    return out
