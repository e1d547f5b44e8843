"""pubmind.durable: the bounded SQLite reader pool."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from pubmind.durable import ReaderPool, connect
from pubmind.errors import ServiceUnavailable


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "x.sqlite"
    db = connect(path, schema="CREATE TABLE IF NOT EXISTS t (v INTEGER)")
    db.execute("INSERT INTO t VALUES (1)")
    db.close()
    return path


def test_many_threads_share_at_most_size_connections(db_path: Path) -> None:
    pool = ReaderPool(db_path, size=3)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(pool.query("SELECT v FROM t")[0][0]))
               for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 50
    assert pool.opened <= 3
    pool.close()


def test_a_busy_pool_times_out_with_a_clear_error(db_path: Path) -> None:
    pool = ReaderPool(db_path, size=1, timeout_s=0.1)
    with pool.connection(), pytest.raises(ServiceUnavailable, match="all 1 readers"):
        pool.query("SELECT 1")
    pool.close()


def test_closed_pool_refuses_new_connections(db_path: Path) -> None:
    pool = ReaderPool(db_path, size=2)
    pool.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        pool.query("SELECT 1")
