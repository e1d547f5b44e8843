"""Durable-write plumbing shared by every store: atomic file replacement and SQLite (WAL) connections with
IMMEDIATE transactions. One copy, so every state file in ``PUBMIND_HOME`` gets the same crash guarantees."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temp file beside ``path``, fsync it, rename it over ``path``, fsync the folder.
    A crash at any point leaves either the old or the new file, never a torn one."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, *, indent: int = 2) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=indent, default=str)))


def connect(path: Path, *, schema: str = "", timeout_s: float = 60.0,
            synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> sqlite3.Connection:
    """A SQLite connection in WAL mode (readers never block the writer), autocommit (transactions are explicit
    through ``immediate``), usable from several threads behind the caller's lock. ``schema``: idempotent
    ``CREATE ... IF NOT EXISTS`` statements (``;``-separated, no triggers) run in one transaction.
    ``synchronous="FULL"`` makes every commit survive a power cut (keys, reviews, the audit trail); NORMAL
    (WAL) may lose the last commits on power loss but never corrupts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    assert synchronous in ("NORMAL", "FULL"), synchronous
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    if schema:
        with immediate(db, threading.Lock()):
            for stmt in schema.split(";"):
                if stmt.strip():
                    db.execute(stmt)
    return db


@contextmanager
def immediate(db: sqlite3.Connection, lock: threading.Lock | threading.RLock) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception) under ``lock``."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
