"""Re-tune jobs: launch ``python -m finetune.train --job_dir DIR`` in its own process (own session, so the
API stays responsive and a cancel kills the whole process group), watch it, cancel it. (Keeping vLLM in line with the registry is ``generation.deploy``.)

Job state lives in the app database (``finetune.store``), so it survives an API restart: a job whose
process is gone while its state says queued/running is marked failed (``recover``), never silently lost.
One active job per adapter (Conflict/409 otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune.registry import check_name
from finetune.store import ACTIVE_JOB_STATUSES, CorrectionStore, Job, JobStore, job_process_alive
from pubmind.errors import Conflict, InvalidInput, PubmindError
from pubmind.settings import FinetuneSettings, Settings

log = logging.getLogger("pubmind.jobs")

# Settings a job may override per request (the rest of settings.finetune is policy, not a hyperparameter).
TUNABLE = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs", "learning_rate", "batch_size",
           "max_seq_len", "distractors", "heldout_fraction", "seed")
CANCEL_GRACE_SECONDS = 5.0
EVAL_KEYS = ("pubmedqa_path", "pubmedqa_limit", "train_sample")  # per-job gate options


def resolve_hyperparameters(settings: Settings, overrides: dict[str, Any] | None) -> FinetuneSettings:
    """``settings.finetune`` with per-job ``overrides``; InvalidInput names an unknown or bad key."""
    overrides = dict(overrides or {})
    if bad := sorted(set(overrides) - set(TUNABLE)):
        raise InvalidInput(f"hyperparameters: unknown keys {bad}; allowed: {list(TUNABLE)}", param="hyperparameters")
    try:
        hp = FinetuneSettings.model_validate({**settings.finetune.model_dump(), **overrides})
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, err['loc']))}={err.get('input')!r}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"hyperparameters: {errs}", param="hyperparameters") from None
    if hp.lora_r > settings.llm.max_lora_rank:
        raise InvalidInput(f"hyperparameters.lora_r={hp.lora_r} exceeds llm.max_lora_rank="
                           f"{settings.llm.max_lora_rank}: vLLM could not load the adapter",
                           param="hyperparameters.lora_r")
    return hp


class JobRunner:
    """Starts, watches and cancels job processes for one API server (or CLI invocation)."""

    command: tuple[str, ...] = (sys.executable, "-m", "finetune.train")  # + --job_dir DIR --num_threads N

    def __init__(self, settings: Settings, jobs: JobStore, corrections: CorrectionStore, *,
                 train_threads: int | None = None) -> None:
        """``train_threads``: torch CPU threads of job processes (None: ``finetune.threads``; 0: torch's default)."""
        self.settings, self.jobs, self.corrections = settings, jobs, corrections
        self.train_threads = settings.finetune.threads if train_threads is None else train_threads
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def recover(self) -> list[str]:
        """Mark jobs interrupted by a restart as failed; call once at start-up."""
        failed = self.jobs.fail_interrupted()
        if failed:
            log.warning("re-tune jobs interrupted by a restart, marked failed: %s", failed)
        return failed

    def submit(self, adapter: str, *, hyperparameters: dict[str, Any] | None = None,
               min_examples: int | None = None, created_by: str, evaluation: dict[str, Any] | None = None) -> Job:
        """Validate, record a queued job and launch its process. Conflict if ``adapter`` has an active job
        or fewer than ``min_examples`` corrections are accepted."""
        check_name(adapter)
        hp = resolve_hyperparameters(self.settings, hyperparameters)
        needed = self.settings.finetune.min_examples if min_examples is None else min_examples
        if not isinstance(needed, int) or isinstance(needed, bool) or needed < 1:
            raise InvalidInput(f"min_examples must be an integer >= 1, got {min_examples!r}", param="min_examples")
        evaluation = dict(evaluation or {})
        if bad := sorted(set(evaluation) - set(EVAL_KEYS)):
            raise InvalidInput(f"evaluation: unknown keys {bad}; allowed: {list(EVAL_KEYS)}", param="evaluation")
        if evaluation.get("pubmedqa_path") and not Path(evaluation["pubmedqa_path"]).is_file():
            raise InvalidInput(f"evaluation.pubmedqa_path {evaluation['pubmedqa_path']!r} is not a file",
                               param="evaluation.pubmedqa_path")
        have = self.corrections.count("accepted")
        if have < needed:
            raise Conflict(f"{have} accepted corrections, a re-tune needs min_examples={needed}; accept more "
                           f"(PATCH /v1/feedback/ID) or lower min_examples", param="min_examples")
        self.jobs.fail_interrupted()  # a dead job must not block the adapter forever
        job = self.jobs.create(adapter, hp.job_dump(), needed, created_by)
        job_dir = self.settings.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "job.json").write_text(json.dumps({
            "job_id": job.id, "adapter": adapter, "hyperparameters": hp.job_dump(), "min_examples": needed,
            "eval": evaluation,
            # the job's settings (secrets left out: the job does not use E-utilities; a vLLM key goes by env)
            "settings": self.settings.model_dump(mode="json", exclude={"eutils": True, "llm": {"vllm_api_key"}})},
            indent=2))
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if self.settings.llm.vllm_api_key:
            env["PUBMIND_LLM__VLLM_API_KEY"] = self.settings.llm.vllm_api_key
        try:
            with open(job_dir / "log.txt", "ab") as logf:
                proc = subprocess.Popen(
                    [*self.command, "--job_dir", str(job_dir), "--num_threads", str(self.train_threads)],
                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                )
        except OSError as e:
            self.jobs.update(job.id, status="failed", finished_at=time.time(),
                                  error=f"could not start the job process: {e}")
            raise
        with self._lock:
            self._procs[job.id] = proc
        job = self.jobs.update(job.id, pid=proc.pid)
        threading.Thread(target=self._watch, args=(job.id, proc), daemon=True, name=f"watch-{job.id}").start()
        return job

    def _watch(self, job_id: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            self._procs.pop(job_id, None)
        try:
            job = self.jobs.get(job_id)
            if job.status in ACTIVE_JOB_STATUSES:  # exited without recording an outcome (killed, crashed)
                self.jobs.update(job_id, expect=ACTIVE_JOB_STATUSES, status="failed", finished_at=time.time(),
                                      error=f"job process exited with code {code} without finishing; see "
                                            f"{self.settings.jobs_dir / job_id / 'log.txt'}")
        except (PubmindError, sqlite3.ProgrammingError) as e:  # e.g. the store closed at server shutdown
            log.warning("could not record the end of job %s (exit code %s): %s; the next start-up's recover() "
                        "reports it if it did not finish", job_id, code, e)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job.status in ACTIVE_JOB_STATUSES and job.pid is not None and job_id not in self._procs \
                and not job_process_alive(job.pid, job_id):
            self.jobs.fail_interrupted()
            job = self.jobs.get(job_id)
        return job

    def cancel(self, job_id: str) -> Job:
        """Kill the job's process group and mark it cancelled. Conflict if the job already finished."""
        job = self.jobs.get(job_id)
        if job.status not in ACTIVE_JOB_STATUSES:
            raise Conflict(f"job {job_id} already finished with status {job.status!r}", param="job_id")
        job = self.jobs.update(job_id, expect=ACTIVE_JOB_STATUSES, status="cancelled", finished_at=time.time(),
                                    error="cancelled")
        if job.pid is not None and job_process_alive(job.pid, job_id):
            _kill_group(job.pid)
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is not None:
            try:
                proc.wait(CANCEL_GRACE_SECONDS * 2)
            except subprocess.TimeoutExpired:
                log.error("job %s process %s survived SIGKILL", job_id, proc.pid)
        return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """Block until the job finishes (``on_progress(job)`` on every change)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            job = self.get(job_id)
            if on_progress and (job.status, job.progress) != last:
                on_progress(job)
                last = (job.status, job.progress)
            if job.status not in ACTIVE_JOB_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise Conflict(f"job {job_id} still {job.status} after {timeout:g}s", param="job_id")
            time.sleep(poll)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + CANCEL_GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def job_view(job: Job) -> dict[str, Any]:
    """What GET /v1/retune/{id} and ``pubmind retune`` show."""
    r = job.result
    return {"job_id": job.id, "adapter": job.adapter, "status": job.status, "progress": job.progress,
            "version": r.get("version"), "lora_name": r.get("lora_name"), "evaluation": r.get("evaluation"),
            "promoted": r.get("promoted", False), "served": r.get("served"), "dataset": r.get("dataset"),
            "training": r.get("training"), "loss_history": r.get("loss_history", []), "stages": r.get("stages"), "error": job.error, "hyperparameters": job.hyperparameters,
            "min_examples": job.min_examples, "created_by": job.created_by, "created_at": job.created_at,
            "started_at": job.started_at, "finished_at": job.finished_at}
