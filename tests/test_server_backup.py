"""Backup and restore: a consistent snapshot while writing, a faithful restore, refusal of bad backups."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from finetune.registry import AdapterRegistry
from pubmind.audit import Actor, AuditLog
from pubmind.errors import Conflict, InvalidInput
from pubmind.settings import Settings
from retrieval.index import VectorIndex
from retrieval.indexer import Indexer
from retrieval.store import CorpusStore
from server.auth import KeyStore
from server.backup import create_backup, restore_backup, verify_backup
from tests.fixtures_retrieval import make_article


@pytest.fixture()
def home(settings: Settings, hash_embedder: Any, tmp_path: Path) -> dict[str, Any]:
    """A populated home: 40 articles indexed, a key, an audit row, an adapter with one promoted version."""
    with Indexer(settings, hash_embedder) as ix:
        ix.apply([make_article(p) for p in range(100, 140)], progress=False)
    keys = KeyStore(settings.app_db)
    key = keys.create("alice", "curator")
    keys.close()
    audit = AuditLog(settings.app_db)
    audit.record("key.create", "key:1", Actor.cli(), after={"name": "alice"})
    audit.close()
    src = tmp_path / "lora"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    reg = AdapterRegistry(settings.adapters_dir)
    reg.promote("onco", reg.create_version("onco", src, {"note": "v1"}).version)
    return {"key": key, "fingerprint": hash_embedder.fingerprint}


def stats(s: Settings, fingerprint: dict[str, Any]) -> dict[str, Any]:
    store = CorpusStore(s.corpus_db)
    articles = store._query("SELECT pmid, version, record FROM articles ORDER BY pmid")
    store.close()
    index = VectorIndex.open(s.index_dir, s, fingerprint, readonly=True)
    return {"articles": articles, "vectors": sorted(index.ids().tolist()),
            "current": AdapterRegistry(s.adapters_dir).current("onco").lora_name}  # type: ignore[union-attr]


def test_restore_reproduces_the_home(settings: Settings, home: dict[str, Any], tmp_path: Path,
                                     make_settings: Callable[..., Settings]) -> None:
    manifest = create_backup(settings, tmp_path / "bk")
    assert manifest["stats"]["articles"] == 40
    target = make_settings(home=tmp_path / "restored")
    restore_backup(target, tmp_path / "bk")
    assert stats(target, home["fingerprint"]) == stats(settings, home["fingerprint"])
    keys = KeyStore(target.app_db)
    assert keys.authenticate(home["key"]) is not None
    keys.close()
    audit = AuditLog(target.app_db)
    assert [r.action for r in audit.query()] == ["key.create"]
    audit.close()


def test_backup_is_consistent_while_a_writer_writes(settings: Settings, home: dict[str, Any], tmp_path: Path,
                                                    hash_embedder: Any,
                                                    make_settings: Callable[..., Settings]) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with Indexer(settings, hash_embedder) as ix:
                pmid = 1000
                while not stop.is_set() and pmid < 1200:  # bounded
                    ix.apply([make_article(pmid), make_article(pmid + 1)], progress=False)
                    pmid += 2
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=write)
    t.start()
    try:
        manifest = create_backup(settings, tmp_path / "bk")
    finally:
        stop.set()
        t.join(60)
    assert errors == []
    target = make_settings(home=tmp_path / "restored")
    restore_backup(target, tmp_path / "bk")
    restored = CorpusStore(target.corpus_db)
    n = restored._query("SELECT count(*) FROM articles")[0][0]
    restored.close()
    assert n == manifest["stats"]["articles"]
    assert VectorIndex.open(target.index_dir, target, home["fingerprint"], readonly=True).generation \
        == manifest["index_generation"]


def test_corrupt_incomplete_and_nonempty_are_refused(settings: Settings, home: dict[str, Any], tmp_path: Path,
                                                     make_settings: Callable[..., Settings]) -> None:
    bk = tmp_path / "bk"
    create_backup(settings, bk)
    target = make_settings(home=tmp_path / "restored")

    db = bk / "app.sqlite"
    data = bytearray(db.read_bytes())
    data[-100] ^= 0xFF
    db.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match=r"corrupt: app\.sqlite does not match its checksum"):
        restore_backup(target, bk)
    assert not target.home.exists()  # nothing left behind

    (bk / "backup.json").unlink()
    with pytest.raises(InvalidInput, match=r"not a complete backup: backup\.json is missing"):
        verify_backup(bk)

    with pytest.raises(Conflict, match="is not empty"):
        restore_backup(settings, tmp_path / "bk")


def test_backup_refuses_a_nonempty_folder_and_one_inside_home(settings: Settings, home: dict[str, Any],
                                                             tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InvalidInput, match="is not empty"):
        create_backup(settings, tmp_path / "full")
    with pytest.raises(InvalidInput, match="inside the home"):
        create_backup(settings, settings.home / "bk")


def test_cli_backup_and_restore(cli: Any, settings: Settings, home: dict[str, Any], tmp_path: Path) -> None:
    r = cli("backup", str(tmp_path / "bk"))
    assert r.code == 0, r.err
    assert json.loads(r.out)["stats"]["articles"] == 40
    r = cli("restore", str(tmp_path / "bk"), home=tmp_path / "restored")
    assert r.code == 0, r.err
    r = cli("audit", "--json", home=tmp_path / "restored")  # the snapshot predates its own backup.create row
    assert [e["action"] for e in json.loads(r.out)] == ["restore.run", "key.create"]
    r = cli("audit", "--action", "backup.create", "--json")
    assert [e["target"] for e in json.loads(r.out)] == [str(tmp_path / "bk")]
    r = cli("restore", str(tmp_path / "bk"), home=tmp_path / "restored")
    assert r.code == 1
    assert "is not empty" in r.err
