"""Durable-write plumbing shared by every store: atomic file replacement and SQLite (WAL) connections with
IMMEDIATE transactions. One copy, so every state file in ``PUBMIND_HOME`` gets the same crash guarantees."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pubmind.errors import ServiceUnavailable


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


class ReaderPool:
    """At most ``size`` read connections to the SQLite file at ``path``, shared by any number of threads.

    A connection per thread would leak: servers run reads on worker threads that come and go (anyio retires
    idle ones), and a thread-local connection outlives nothing but its thread's slot. Here a reading thread
    borrows a connection for one query and returns it; when all ``size`` are out, it waits for one.
    WAL mode: readers never block the writer, nor it them."""

    def __init__(self, path: Path, size: int = 8, *, cache_kib: int = 16384, timeout_s: float = 60.0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.path, self.size, self._cache_kib, self._timeout_s = path, size, cache_kib, timeout_s
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()  # most recently used first: warm cache
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self._timeout_s)
        db.execute(f"PRAGMA cache_size=-{self._cache_kib}")
        return db

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection (opened on demand up to ``size``, else wait for a free one)."""
        try:
            db = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                if self._closed:
                    raise sqlite3.ProgrammingError(f"reader pool of {self.path} is closed") from None
                grow = len(self._all) < self.size
                if grow:
                    db = self._open()
                    self._all.append(db)
            if not grow:
                try:
                    db = self._idle.get(timeout=self._timeout_s)
                except queue.Empty:
                    raise ServiceUnavailable(f"all {self.size} readers of {self.path} stayed busy for "
                                             f"{self._timeout_s:g} s") from None
        try:
            yield db
        finally:
            self._idle.put(db)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connection() as db:
            return db.execute(sql, params).fetchall()

    @property
    def opened(self) -> int:
        """Connections open now (never more than ``size``)."""
        return len(self._all)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for db in self._all:
                db.close()
            self._all.clear()
            while not self._idle.empty():  # closed connections must not be handed out again
                self._idle.get_nowait()
