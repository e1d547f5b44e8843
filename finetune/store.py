"""The app database's stores, one per concern: served answers with provenance (``AnswerStore``), curator
corrections (``CorrectionStore``) and re-tune jobs (``JobStore``).

All live in ``settings.app_db`` (SQLite, WAL), the same file the server keeps API keys in; each store owns its
tables (created with CREATE IF NOT EXISTS through ``pubmind.durable.connect``). Several processes use the file
at once (the API server and a training subprocess writing job progress): every write is one short IMMEDIATE
transaction.

Tables:
  answers(id PK, created_at, question, answer, model, adapter_version, index_version, retrieved, citations,
          timings_ms)                  retrieved = JSON [[pmid, score], ...]
  feedback(id PK, created_at, curator, answer_id, question, corrected_answer, pmids, rating, note, source,
           status, reviewer, reviewed_at, provenance)   status: pending | accepted | rejected
  retune_jobs(id PK, adapter, status, created_at, started_at, finished_at, created_by, pid, hyperparameters,
              min_examples, progress, result, error)     status: queued | running | succeeded | failed | cancelled
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Self

import msgspec

from pubmind.durable import connect, immediate
from pubmind.errors import Conflict, InvalidInput, NotFound

CorrectionStatus = Literal["pending", "accepted", "rejected"]
CORRECTION_STATUSES: tuple[str, ...] = ("pending", "accepted", "rejected")
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_JOB_STATUSES: tuple[str, ...] = ("queued", "running")
Row = dict[str, Any]  # one SQLite row by column name (values: str | int | float | None)
CitationRecord = dict[str, int | bool]  # {"pmid": int, "supported": bool}

ANSWERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    model TEXT NOT NULL,
    adapter_version TEXT,
    index_version TEXT,
    retrieved TEXT NOT NULL,
    citations TEXT NOT NULL,
    timings_ms TEXT NOT NULL,
    requester TEXT,
    filters TEXT,
    sampling TEXT,
    conversation_sha256 TEXT,
    stack TEXT,
    finish_reason TEXT
);
"""
# Columns added after the first release: an older app.sqlite gets them (NULL for the answers it already holds).
ANSWERS_ADDED_COLUMNS = ("requester", "filters", "sampling", "conversation_sha256", "stack", "finish_reason")
CORRECTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    curator TEXT NOT NULL,
    answer_id TEXT,
    question TEXT NOT NULL,
    corrected_answer TEXT NOT NULL,
    pmids TEXT NOT NULL,
    rating INTEGER,
    note TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    reviewer TEXT,
    reviewed_at REAL,
    provenance TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_status ON feedback(status, created_at);
"""
JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS retune_jobs (
    id TEXT PRIMARY KEY,
    adapter TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    created_by TEXT NOT NULL,
    pid INTEGER,
    hyperparameters TEXT NOT NULL,
    min_examples INTEGER NOT NULL,
    progress TEXT NOT NULL,
    result TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS retune_jobs_adapter ON retune_jobs(adapter, status);
"""


class Answer(msgspec.Struct, kw_only=True):
    """An answer the server gave, kept so a correction can point at it (and carry its provenance)."""

    id: str
    created_at: float
    question: str
    answer: str
    model: str  # what the client asked for, e.g. "base", "onco", "onco@v3"
    adapter_version: str | None  # the lora_name actually served ("onco@v3"), None for the base model
    index_version: str | None
    retrieved: list[tuple[int, float]]  # (pmid, score) in rank order
    citations: list[CitationRecord]  # as the server reported them
    timings_ms: dict[str, float]
    requester: str | None = None  # the asking key's id ("key:N"); None for answers stored before it was kept
    filters: dict[str, Any] | None = None  # the search filters the question was asked with
    sampling: dict[str, Any] | None = None  # temperature, max_tokens and the other sampling parameters sent to vLLM
    conversation_sha256: str | None = None  # of the conversation as the client sent it (history + question)
    stack: dict[str, Any] | None = None  # library versions that produced it (pubmind.versions.stack_versions)
    finish_reason: str | None = None  # vLLM's (stop, length), or client_disconnected / error for a cut-off stream


class Correction(msgspec.Struct, kw_only=True):
    """A curator's correction. Only ``accepted`` ones are trained on."""

    id: str
    created_at: float
    curator: str  # API key name of the curator who wrote it
    answer_id: str | None  # None when written from scratch (or imported)
    question: str
    corrected_answer: str
    pmids: list[int]  # PMIDs the curator says answer the question
    rating: int | None
    note: str
    source: str  # "api" or "import:<file name>"
    status: str
    reviewer: str | None
    reviewed_at: float | None
    provenance: dict[str, Any]  # original answer, its retrieved PMIDs, model/adapter/index versions


class Job(msgspec.Struct, kw_only=True):
    """A re-tune job. ``progress`` = {"stage", "step", "total_steps", "loss", "epoch", ...};
    ``result`` = {"version", "lora_name", "evaluation", "promoted", "dataset", ...}."""

    id: str
    adapter: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    created_by: str
    pid: int | None
    hyperparameters: dict[str, Any]
    min_examples: int
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _check_status(value: str, allowed: Sequence[str], param: str) -> None:
    if value not in allowed:
        raise InvalidInput(f"{param} must be one of {list(allowed)}, got {value!r}", param=param)


class _Tables:
    """One connection to the app database behind a lock, with this store's ``SCHEMA`` created. Thread-safe;
    safe across processes (WAL + busy timeout)."""

    SCHEMA = ""
    SYNCHRONOUS: Literal["NORMAL", "FULL"] = "NORMAL"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = connect(self.path, schema=self.SCHEMA, synchronous=self.SYNCHRONOUS)

    def _txn(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock)

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            cur = self._db.execute(sql, params)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AnswerStore(_Tables):
    """Served answers with their provenance (model, adapter and index versions, retrieved PMIDs)."""

    SCHEMA = ANSWERS_SCHEMA

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        with self._txn() as db:
            have = {r[1] for r in db.execute("PRAGMA table_info(answers)")}
            for col in ANSWERS_ADDED_COLUMNS:
                if col not in have:
                    db.execute(f"ALTER TABLE answers ADD COLUMN {col} TEXT")

    def record(
        self,
        question: str,
        answer: str,
        model: str,
        adapter_version: str | None,
        index_version: str | None,
        retrieved: Sequence[tuple[int, float]],
        citations: Sequence[CitationRecord],
        timings_ms: dict[str, float],
        *,
        requester: str | None = None,
        filters: dict[str, Any] | None = None,
        sampling: dict[str, Any] | None = None,
        conversation_sha256: str | None = None,
        stack: dict[str, Any] | None = None,
        finish_reason: str | None = None,
    ) -> str:
        """Keep a served answer with its provenance; returns its id (``ans_...``), which clients quote in
        feedback."""
        answer_id = _new_id("ans")

        def enc(v: Any) -> str | None:
            return None if v is None else json.dumps(v, default=_json_default, sort_keys=True)

        with self._txn() as db:
            db.execute(
                "INSERT INTO answers (id, created_at, question, answer, model, adapter_version, index_version, "
                "retrieved, citations, timings_ms, requester, filters, sampling, conversation_sha256, stack, "
                "finish_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (answer_id, time.time(), question, answer, model, adapter_version, index_version,
                 json.dumps([[int(p), float(s)] for p, s in retrieved]),
                 json.dumps(list(citations), default=_json_default), json.dumps(dict(timings_ms)),
                 requester, enc(filters), enc(sampling), conversation_sha256, enc(stack), finish_reason),
            )
        return answer_id

    def get(self, answer_id: str) -> Answer:
        rows = self._query("SELECT * FROM answers WHERE id = ?", (answer_id,))
        if not rows:
            raise NotFound(f"answer_id {answer_id!r} not found", param="answer_id")
        r = rows[0]
        return Answer(
            id=r["id"], created_at=r["created_at"], question=r["question"], answer=r["answer"],
            model=r["model"], adapter_version=r["adapter_version"], index_version=r["index_version"],
            retrieved=[(int(p), float(s)) for p, s in json.loads(r["retrieved"])],
            citations=json.loads(r["citations"]), timings_ms=json.loads(r["timings_ms"]),
            requester=r["requester"], conversation_sha256=r["conversation_sha256"], finish_reason=r["finish_reason"],
            **{k: None if r[k] is None else json.loads(r[k]) for k in ("filters", "sampling", "stack")},
        )


    def delete_before(self, cutoff: float) -> int:
        """Delete answers created before ``cutoff`` (unix s) that no correction refers to; returns how many."""
        with self._txn() as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='feedback'").fetchone() is None:
                return db.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,)).rowcount
            return db.execute(
                "DELETE FROM answers WHERE created_at < ? AND id NOT IN "
                "(SELECT answer_id FROM feedback WHERE answer_id IS NOT NULL)", (cutoff,)).rowcount


class CorrectionStore(_Tables):
    """Curator corrections and their review (pending -> accepted | rejected)."""

    SCHEMA = CORRECTIONS_SCHEMA
    SYNCHRONOUS = "FULL"  # an accepted or rejected review must survive a power cut

    def add(
        self,
        *,
        question: str,
        corrected_answer: str,
        pmids: Sequence[int],
        curator: str,
        answer: Answer | None = None,
        rating: int | None = None,
        note: str = "",
        source: str = "api",
        status: CorrectionStatus = "pending",
    ) -> Correction:
        """Store a correction (validate it first with ``finetune.dataset.validate_correction``). With the
        corrected ``answer`` (``AnswerStore.get``) its id and provenance are copied in."""
        _check_status(status, CORRECTION_STATUSES, "status")
        provenance: dict[str, Any] = {}
        if answer is not None:
            provenance = {
                "original_question": answer.question, "original_answer": answer.answer, "model": answer.model,
                "adapter_version": answer.adapter_version, "index_version": answer.index_version,
                "retrieved_pmids": [p for p, _ in answer.retrieved], "answered_at": answer.created_at,
            }
        now = time.time()
        fb = Correction(
            id=_new_id("fb"), created_at=now, curator=curator, answer_id=answer.id if answer else None,
            question=question,
            corrected_answer=corrected_answer, pmids=[int(p) for p in pmids], rating=rating, note=note,
            source=source, status=status, reviewer=curator if status != "pending" else None,
            reviewed_at=now if status != "pending" else None, provenance=provenance,
        )
        with self._txn() as db:
            db.execute(
                "INSERT INTO feedback VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (fb.id, fb.created_at, fb.curator, fb.answer_id, fb.question, fb.corrected_answer,
                 json.dumps(fb.pmids), fb.rating, fb.note, fb.source, fb.status, fb.reviewer,
                 fb.reviewed_at, json.dumps(fb.provenance)),
            )
        return fb

    @staticmethod
    def _correction(r: Row) -> Correction:
        return Correction(
            id=r["id"], created_at=r["created_at"], curator=r["curator"], answer_id=r["answer_id"],
            question=r["question"], corrected_answer=r["corrected_answer"], pmids=json.loads(r["pmids"]),
            rating=r["rating"], note=r["note"], source=r["source"], status=r["status"],
            reviewer=r["reviewer"], reviewed_at=r["reviewed_at"], provenance=json.loads(r["provenance"]),
        )

    def get(self, correction_id: str) -> Correction:
        rows = self._query("SELECT * FROM feedback WHERE id = ?", (correction_id,))
        if not rows:
            raise NotFound(f"feedback id {correction_id!r} not found", param="id")
        return self._correction(rows[0])

    def find(self, status: str | None = None, limit: int = 1000, offset: int = 0) -> list[Correction]:
        """Corrections, oldest first; ``status`` None lists all."""
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}", param="limit")
        if offset < 0:
            raise InvalidInput(f"offset must be >= 0, got {offset}", param="offset")
        if status is None:
            rows = self._query("SELECT * FROM feedback ORDER BY created_at, id LIMIT ? OFFSET ?", (limit, offset))
        else:
            _check_status(status, CORRECTION_STATUSES, "status")
            rows = self._query("SELECT * FROM feedback WHERE status = ? ORDER BY created_at, id LIMIT ? OFFSET ?",
                               (status, limit, offset))
        return [self._correction(r) for r in rows]

    def count(self, status: str) -> int:
        _check_status(status, CORRECTION_STATUSES, "status")
        n: int = self._query("SELECT COUNT(*) AS n FROM feedback WHERE status = ?", (status,))[0]["n"]
        return n

    def set_status(self, correction_id: str, status: str, reviewer: str) -> Correction:
        """Accept or reject (or send back to pending) a correction; records who and when."""
        _check_status(status, CORRECTION_STATUSES, "status")
        with self._txn() as db:
            n = db.execute("UPDATE feedback SET status = ?, reviewer = ?, reviewed_at = ? WHERE id = ?",
                           (status, reviewer, time.time(), correction_id)).rowcount
        if not n:
            raise NotFound(f"feedback id {correction_id!r} not found", param="id")
        return self.get(correction_id)

    def accepted(self) -> list[Correction]:
        """Every accepted correction, oldest first: the training material."""
        rows = self._query("SELECT * FROM feedback WHERE status = 'accepted' ORDER BY created_at, id")
        return [self._correction(r) for r in rows]


class JobStore(_Tables):
    """Re-tune job state: one active (queued or running) job per adapter."""

    SCHEMA = JOBS_SCHEMA

    def create(self, adapter: str, hyperparameters: dict[str, Any], min_examples: int, created_by: str) -> Job:
        """A queued job; Conflict (409) if the adapter already has a queued or running job."""
        now = time.time()
        job = Job(id=_new_id("job"), adapter=adapter, status="queued", created_at=now, started_at=None,
                  finished_at=None, created_by=created_by, pid=None, hyperparameters=dict(hyperparameters),
                  min_examples=min_examples, progress={"stage": "queued"}, result={}, error=None)
        with self._txn() as db:
            busy = db.execute(
                "SELECT id FROM retune_jobs WHERE adapter = ? AND status IN ('queued', 'running')", (adapter,)
            ).fetchone()
            if busy:
                raise Conflict(f"adapter {adapter!r} already has an active re-tune job {busy[0]}; wait for it "
                               f"or cancel it (DELETE /v1/retune/{busy[0]})", param="adapter")
            db.execute(
                "INSERT INTO retune_jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job.id, adapter, job.status, now, None, None, created_by, None,
                 json.dumps(job.hyperparameters), min_examples, json.dumps(job.progress), "{}", None),
            )
        return job

    @staticmethod
    def _job(r: Row) -> Job:
        return Job(
            id=r["id"], adapter=r["adapter"], status=r["status"], created_at=r["created_at"],
            started_at=r["started_at"], finished_at=r["finished_at"], created_by=r["created_by"], pid=r["pid"],
            hyperparameters=json.loads(r["hyperparameters"]), min_examples=r["min_examples"],
            progress=json.loads(r["progress"]), result=json.loads(r["result"]), error=r["error"],
        )

    def get(self, job_id: str) -> Job:
        rows = self._query("SELECT * FROM retune_jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"job_id {job_id!r} not found", param="job_id")
        return self._job(rows[0])

    def find(self, adapter: str | None = None, status: str | None = None) -> list[Job]:
        """Jobs, oldest first, optionally of one adapter and/or in one status."""
        sql, params = "SELECT * FROM retune_jobs WHERE 1=1", list[str]()
        if adapter is not None:
            sql, params = sql + " AND adapter = ?", [*params, adapter]
        if status is not None:
            _check_status(status, JOB_STATUSES, "status")
            sql, params = sql + " AND status = ?", [*params, status]
        return [self._job(r) for r in self._query(sql + " ORDER BY created_at, id", params)]

    def update(self, job_id: str, *, expect: Sequence[str] | None = None, **fields: Any) -> Job:
        """Set columns of a job (dicts are stored as JSON; ``progress``/``result`` are MERGED into the
        stored dicts). With ``expect``, only update while the job's status is one of those, else Conflict
        (e.g. a finished job is never moved back to running)."""
        allowed = {"status", "started_at", "finished_at", "pid", "progress", "result", "error"}
        bad = set(fields) - allowed
        if bad:
            raise InvalidInput(f"JobStore.update: unknown fields {sorted(bad)}", param="fields")
        if "status" in fields:
            _check_status(fields["status"], JOB_STATUSES, "status")
        with self._txn() as db:
            row = db.execute("SELECT status, progress, result FROM retune_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job_id {job_id!r} not found", param="job_id")
            if expect is not None and row[0] not in expect:
                raise Conflict(f"job {job_id} is {row[0]!r}, expected one of {list(expect)}", param="job_id")
            values = dict(fields)
            if "progress" in values:
                values["progress"] = json.dumps({**json.loads(row[1]), **values["progress"]}, default=_json_default)
            if "result" in values:
                values["result"] = json.dumps({**json.loads(row[2]), **values["result"]}, default=_json_default)
            if values:
                cols = ", ".join(f"{k} = ?" for k in values)
                db.execute(f"UPDATE retune_jobs SET {cols} WHERE id = ?", [*values.values(), job_id])
        return self.get(job_id)

    def fail_interrupted(self) -> list[str]:
        """Mark every queued/running job whose process is gone as failed, and return their ids. Called at
        server start-up (and by the job runner while polling) so an interrupted job is reported, never
        silently lost. A job process that is still alive (it runs in its own session) is left alone: it
        finishes and records its own result."""
        failed = []
        for job in self.find():
            if job.status not in ACTIVE_JOB_STATUSES or job_process_alive(job.pid, job.id):
                continue
            if job.status == "queued" and job.pid is None and time.time() - job.created_at < 60:
                continue  # being launched right now
            try:
                self.update(job.id, expect=ACTIVE_JOB_STATUSES, status="failed", finished_at=time.time(),
                            error="interrupted: the job process stopped before the job finished (server "
                                  "restart, crash or kill); the served adapter is unchanged")
                failed.append(job.id)
            except Conflict:
                continue
        return failed


def job_process_alive(pid: int | None, job_id: str) -> bool:
    """True if ``pid`` is a live process running job ``job_id`` (its command line names the job directory,
    so a recycled PID is not mistaken for the job)."""
    if pid is None:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(job_id in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _json_default(o: object) -> object:
    if isinstance(o, msgspec.Struct):
        return msgspec.to_builtins(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
