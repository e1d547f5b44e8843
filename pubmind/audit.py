"""The audit trail: an append-only table of every state change, in the app database.

One row per change: time, the acting key's id (not its reusable name) and role, the action, its target, and
the state before and after (JSON). Rows are never updated or deleted: SQLite triggers refuse it, so even a bug
elsewhere cannot rewrite history. Commits use ``synchronous=FULL`` (a recorded revocation survives a power
cut). Read by ``GET /v1/audit`` (admin) and ``pubmind audit``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from pubmind.durable import connect, immediate
from pubmind.errors import InvalidInput

ACTIONS = (
    "key.create", "key.revoke",
    "correction.submit", "correction.edit", "correction.accept", "correction.reject",
    "retune.start", "retune.cancel", "retune.finish",
    "adapter.promote", "adapter.rollback",
    "ingest.run", "sync.run",
    "backup.create", "restore.run", "retention.run",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    key_id TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX IF NOT EXISTS audit_action_at ON audit(action, at);
CREATE INDEX IF NOT EXISTS audit_target ON audit(target);
CREATE INDEX IF NOT EXISTS audit_key_at ON audit(key_id, at)
"""
_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
)
MAX_LIMIT = 1000


class Actor(msgspec.Struct, frozen=True):
    """Who made a change: an API key (``key:<id>``) or a local operator (``cli:<user>``), and their role."""

    key_id: str
    role: str

    @classmethod
    def cli(cls) -> Actor:
        """The operator running a ``pubmind`` command on the server (trusted like an admin)."""
        return cls(key_id=f"cli:{os.environ.get('USER') or os.getuid()}", role="admin")

    @classmethod
    def system(cls, what: str) -> Actor:
        """pubmind itself (a re-tune job, a scheduled sync)."""
        return cls(key_id=f"system:{what}", role="admin")


class AuditEntry(msgspec.Struct, kw_only=True):
    id: int
    at: float  # unix seconds
    key_id: str
    role: str
    action: str
    target: str
    before: Any = None
    after: Any = None


class AuditLog:
    """Append and query the audit table of ``app.sqlite`` (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self._db = connect(path, schema=_SCHEMA, synchronous="FULL")
        self._lock = threading.Lock()
        with immediate(self._db, self._lock) as db:
            for trigger in _TRIGGERS:
                db.execute(trigger)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, action: str, target: str, actor: Actor, *, before: Any = None, after: Any = None) -> int:
        """Append one row; returns its id. ``action`` must be one of ``ACTIONS``."""
        if action not in ACTIONS:
            raise InvalidInput(f"action={action!r} is not an audit action; one of {list(ACTIONS)}", param="action")
        enc = [None if v is None else json.dumps(v, default=str, sort_keys=True) for v in (before, after)]
        with immediate(self._db, self._lock) as db:
            cur = db.execute(
                "INSERT INTO audit (at, key_id, role, action, target, before, after) VALUES (?,?,?,?,?,?,?)",
                (time.time(), actor.key_id, actor.role, action, str(target), *enc))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def query(self, *, action: str | None = None, target: str | None = None, key_id: str | None = None,
              since: float | None = None, until: float | None = None, limit: int = 100,
              offset: int = 0) -> list[AuditEntry]:
        """Rows newest first, filtered by exact action (or a prefix ending in '.', e.g. 'correction.'),
        target, key id and time range [since, until)."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}", param="limit")
        if offset < 0:
            raise InvalidInput(f"offset must be >= 0, got {offset}", param="offset")
        where: list[str] = []
        params: list[Any] = []
        if action:
            if not action.endswith(".") and action not in ACTIONS:
                raise InvalidInput(f"action={action!r} is not an audit action; one of {list(ACTIONS)} "
                                   f"(or a prefix such as 'correction.')", param="action")
            # a prefix names the actions it starts (the vocabulary is fixed: no LIKE patterns to escape)
            wanted = [a for a in ACTIONS if a.startswith(action)] if action.endswith(".") else [action]
            where.append(f"action IN ({','.join('?' * len(wanted))})" if wanted else "0")
            params.extend(wanted)
        for col, val in (("target", target), ("key_id", key_id)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        sql = ("SELECT id, at, key_id, role, action, target, before, after FROM audit"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ? OFFSET ?")
        with self._lock:
            rows: Sequence[sqlite3.Row] = self._db.execute(
                sql, [*params, limit, offset]).fetchall()
        return [AuditEntry(id=r[0], at=r[1], key_id=r[2], role=r[3], action=r[4], target=r[5],
                           before=None if r[6] is None else json.loads(r[6]),
                           after=None if r[7] is None else json.loads(r[7])) for r in rows]
