"""The workbench's records in the app database: readers' ratings of answers, who asked what in the workbench
(with the evidence shown), and the review log of corrections (every accept/reject with its note).

Tables (``settings.app_db``, beside ``answers`` and ``feedback`` of ``finetune.store``):
  ratings(answer_id, rater, value, comment, created_at)   value: +1 | -1; one rating per (answer, rater)
  asks(answer_id PK, asked_by, created_at, question, model, evidence)   evidence = JSON [Evidence, ...]
  reviews(id, correction_id, reviewer, status, note, created_at)        status: accepted | rejected | pending
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import msgspec

from finetune.store import CORRECTION_STATUSES, _Tables
from pubmind.errors import InvalidInput, NotFound

MAX_COMMENT_CHARS = 5_000
QueueKind = Literal["down", "unsupported", "pending"]
QUEUE_KINDS: tuple[str, ...] = ("down", "unsupported", "pending")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    answer_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    value INTEGER NOT NULL,
    comment TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (answer_id, rater)
);
CREATE INDEX IF NOT EXISTS ratings_value ON ratings(value, created_at);
CREATE TABLE IF NOT EXISTS asks (
    answer_id TEXT PRIMARY KEY,
    asked_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    question TEXT NOT NULL,
    model TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS asks_by ON asks(asked_by, created_at);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    correction_id TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    status TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_correction ON reviews(correction_id, created_at);
"""


class Rating(msgspec.Struct, kw_only=True):
    answer_id: str
    rater: str
    value: int  # +1 up, -1 down
    comment: str
    created_at: float


class Ask(msgspec.Struct, kw_only=True):
    answer_id: str
    asked_by: str
    created_at: float
    question: str
    model: str
    evidence: list[dict[str, Any]]  # the evidence cards as the reader saw them (server.query.protocol.Evidence)


class Review(msgspec.Struct, kw_only=True):
    correction_id: str
    reviewer: str
    status: str
    note: str
    created_at: float


class QueueItem(msgspec.Struct, kw_only=True):
    kind: str  # "down" | "unsupported" (answers) | "pending" (a correction awaiting review)
    id: str  # answer id or correction id
    created_at: float
    question: str
    model: str  # served model/adapter of the answer, or the correction's curator for "pending"
    detail: str  # rating comments, unsupported PMIDs, or the correction's note
    corrected: bool  # an answer that already has a correction


class RatingStore(_Tables):
    """Ratings, asks and the review log. Thread-safe; every write is one short IMMEDIATE transaction."""

    SCHEMA = SCHEMA
    SYNCHRONOUS = "FULL"  # a review's note is part of the audit trail

    # ---- ratings -------------------------------------------------------------------------------------
    def rate(self, answer_id: str, rater: str, value: int, comment: str = "") -> Rating:
        """Rate an answer up (+1) or down (-1); a second rating by the same rater replaces the first."""
        if value not in (1, -1):
            raise InvalidInput(f"rating must be 'up' or 'down', got {value!r}", param="rating")
        if len(comment) > MAX_COMMENT_CHARS:
            raise InvalidInput(f"comment is {len(comment)} characters, the limit is {MAX_COMMENT_CHARS}",
                               param="comment")
        r = Rating(answer_id=answer_id, rater=rater, value=value, comment=comment.strip(), created_at=time.time())
        with self._txn() as db:
            if db.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
                raise NotFound(f"answer_id {answer_id!r} not found", param="answer_id")
            db.execute("INSERT OR REPLACE INTO ratings VALUES (?,?,?,?,?)",
                       (r.answer_id, r.rater, r.value, r.comment, r.created_at))
        return r

    def ratings(self, answer_id: str) -> list[Rating]:
        rows = self._query("SELECT * FROM ratings WHERE answer_id = ? ORDER BY created_at", (answer_id,))
        return [Rating(**r) for r in rows]

    # ---- asks ----------------------------------------------------------------------------------------
    def record_ask(self, answer_id: str, asked_by: str, question: str, model: str,
                   evidence: list[dict[str, Any]]) -> None:
        with self._txn() as db:
            db.execute("INSERT OR REPLACE INTO asks VALUES (?,?,?,?,?,?)",
                       (answer_id, asked_by, time.time(), question, model, json.dumps(evidence)))

    def ask(self, answer_id: str) -> Ask | None:
        rows = self._query("SELECT * FROM asks WHERE answer_id = ?", (answer_id,))
        return Ask(**{**rows[0], "evidence": json.loads(rows[0]["evidence"])}) if rows else None

    def asks_by(self, asked_by: str, limit: int = 100) -> list[Ask]:
        """``asked_by``'s questions, newest first (answers removed by retention are left out)."""
        rows = self._query("SELECT asks.* FROM asks JOIN answers ON answers.id = asks.answer_id "
                           "WHERE asked_by = ? ORDER BY asks.created_at DESC LIMIT ?", (asked_by, limit))
        return [Ask(**{**r, "evidence": json.loads(r["evidence"])}) for r in rows]

    # ---- reviews -------------------------------------------------------------------------------------
    def add_review(self, correction_id: str, reviewer: str, status: str, note: str) -> Review:
        if status not in CORRECTION_STATUSES:
            raise InvalidInput(f"status must be one of {list(CORRECTION_STATUSES)}, got {status!r}", param="status")
        if len(note) > MAX_COMMENT_CHARS:
            raise InvalidInput(f"note is {len(note)} characters, the limit is {MAX_COMMENT_CHARS}", param="note")
        r = Review(correction_id=correction_id, reviewer=reviewer, status=status, note=note.strip(),
                   created_at=time.time())
        with self._txn() as db:
            db.execute("INSERT INTO reviews (correction_id, reviewer, status, note, created_at) VALUES (?,?,?,?,?)",
                       (r.correction_id, r.reviewer, r.status, r.note, r.created_at))
        return r

    def reviews(self, correction_id: str) -> list[Review]:
        rows = self._query("SELECT correction_id, reviewer, status, note, created_at FROM reviews "
                           "WHERE correction_id = ? ORDER BY created_at, id", (correction_id,))
        return [Review(**r) for r in rows]

    # ---- the curators' queue -------------------------------------------------------------------------
    def queue(self, kinds: tuple[str, ...] = QUEUE_KINDS, text: str = "", limit: int = 200) -> list[QueueItem]:
        """Down-rated answers, answers with unsupported citations and corrections awaiting review, newest
        first; ``text`` filters on the question (case-insensitive substring)."""
        if bad := [k for k in kinds if k not in QUEUE_KINDS]:
            raise InvalidInput(f"kind must be among {list(QUEUE_KINDS)}, got {bad}", param="kind")
        like = f"%{text.strip()}%"
        items: list[QueueItem] = []
        corrected = "EXISTS (SELECT 1 FROM feedback f WHERE f.answer_id = a.id) AS corrected"
        model = "COALESCE(a.adapter_version, a.model) AS model"
        if "down" in kinds:
            for r in self._query(
                f"SELECT a.id, a.question, {model}, MAX(r.created_at) AS at, "
                f"GROUP_CONCAT(NULLIF(r.comment, ''), ' | ') AS comments, {corrected} "
                "FROM ratings r JOIN answers a ON a.id = r.answer_id WHERE r.value < 0 AND a.question LIKE ? "
                "GROUP BY a.id ORDER BY at DESC LIMIT ?", (like, limit)):
                items.append(QueueItem(kind="down", id=r["id"], created_at=r["at"], question=r["question"],
                                       model=r["model"], detail=r["comments"] or "", corrected=bool(r["corrected"])))
        if "unsupported" in kinds:
            for r in self._query(
                f"SELECT a.id, a.question, {model}, a.created_at, {corrected}, "
                "(SELECT GROUP_CONCAT(json_extract(c.value, '$.pmid'), ', ') FROM json_each(a.citations) c "
                " WHERE json_extract(c.value, '$.supported') = 0) AS bad "
                "FROM answers a WHERE a.question LIKE ? AND bad IS NOT NULL "
                "ORDER BY a.created_at DESC LIMIT ?", (like, limit)):
                items.append(QueueItem(kind="unsupported", id=r["id"], created_at=r["created_at"],
                                       question=r["question"], model=r["model"],
                                       detail=f"unsupported PMIDs: {r['bad']}", corrected=bool(r["corrected"])))
        if "pending" in kinds:
            for r in self._query(
                "SELECT id, question, curator, note, created_at FROM feedback WHERE status = 'pending' "
                "AND question LIKE ? ORDER BY created_at DESC LIMIT ?", (like, limit)):
                items.append(QueueItem(kind="pending", id=r["id"], created_at=r["created_at"],
                                       question=r["question"], model=r["curator"], detail=r["note"],
                                       corrected=False))
        return sorted(items, key=lambda i: -i.created_at)[:limit]
