"""The audit trail: append-only rows, filters, bad values named."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pubmind.audit import Actor, AuditLog
from pubmind.errors import InvalidInput

ADMIN = Actor(key_id="key:1", role="admin")
CURATOR = Actor(key_id="key:2", role="curator")


@pytest.fixture()
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "app.sqlite")
    yield log
    log.close()


def test_record_and_query_newest_first(audit: AuditLog) -> None:
    audit.record("key.create", "key:2", ADMIN, after={"name": "bob", "role": "curator"})
    audit.record("correction.submit", "fb_1", CURATOR, after={"answer": "x [PMID:1]"})
    audit.record("correction.accept", "fb_1", ADMIN, before={"status": "pending"}, after={"status": "accepted"})
    rows = audit.query()
    assert [r.action for r in rows] == ["correction.accept", "correction.submit", "key.create"]
    assert rows[0].before == {"status": "pending"}
    assert rows[0].key_id == "key:1"


def test_filters(audit: AuditLog) -> None:
    audit.record("correction.submit", "fb_1", CURATOR)
    t = time.time()
    audit.record("correction.reject", "fb_2", ADMIN)
    audit.record("adapter.promote", "onco", ADMIN)
    assert [r.target for r in audit.query(action="correction.")] == ["fb_2", "fb_1"]
    assert [r.action for r in audit.query(key_id="key:2")] == ["correction.submit"]
    assert [r.target for r in audit.query(target="onco")] == ["onco"]
    assert len(audit.query(since=t)) == 2
    assert [r.target for r in audit.query(until=t)] == ["fb_1"]
    assert len(audit.query(limit=1)) == 1


def test_rows_cannot_be_changed_or_deleted(audit: AuditLog, tmp_path: Path) -> None:
    audit.record("key.revoke", "key:2", ADMIN)
    db = sqlite3.connect(tmp_path / "app.sqlite")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET action = 'key.create'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit")
    db.close()
    assert [r.action for r in audit.query()] == ["key.revoke"]


def test_unknown_action_and_bad_limits_are_named(audit: AuditLog) -> None:
    with pytest.raises(InvalidInput, match=r"action='key\.steal'"):
        audit.record("key.steal", "key:1", ADMIN)
    with pytest.raises(InvalidInput, match="action='bogus'"):
        audit.query(action="bogus")
    with pytest.raises(InvalidInput, match="limit must be between 1 and 1000, got 0"):
        audit.query(limit=0)
    with pytest.raises(InvalidInput, match="offset must be >= 0, got -1"):
        audit.query(offset=-1)


def test_commits_are_synchronous_full(audit: AuditLog) -> None:
    assert audit._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 == FULL
