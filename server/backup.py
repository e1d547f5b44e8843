"""Backup and restore of a pubmind home, consistent while the server runs and writes.

A backup folder holds:
  corpus.sqlite, app.sqlite   SQLite online-backup snapshots (a consistent point in time, writers go on)
  index/                      the current index generation: its manifest and the files the manifest names
  adapters/                   the adapter registry (each adapter copied under its registry lock)
  backup.json                 written last: pubmind version, time, sha256 and size of every file, stats

A folder without ``backup.json`` is an incomplete backup; a file whose checksum or size differs, a missing
file or an extra one makes it corrupt. ``restore`` refuses both, restores only into an empty (or absent) home,
and builds the new home beside it before renaming it into place, so a failed restore leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

from pubmind.durable import fsync_dir, write_json_atomic
from pubmind.errors import Conflict, InvalidInput
from pubmind.settings import Settings

MANIFEST = "backup.json"
FORMAT = 1
DATABASES = ("corpus.sqlite", "app.sqlite")
INDEX_RETRIES = 5  # a writer may save a new generation (and delete the old files) while we copy
Progress = Callable[[str], None]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _copy_db(src: Path, dst: Path) -> None:
    """SQLite online backup: a consistent snapshot even while other connections write (WAL included)."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=60)
    target = sqlite3.connect(dst)
    try:
        source.backup(target, pages=4096)
    finally:
        target.close()
        source.close()


def _copy_index(src: Path, dst: Path) -> int | None:
    """Copy the current generation: the manifest's ``files`` and the manifest itself. Retries when a writer
    saved a newer generation meanwhile (the files we were copying may be gone). Returns the generation."""
    manifest = src / "manifest.json"
    if not manifest.exists():
        return None
    for _ in range(INDEX_RETRIES):
        before = manifest.read_bytes()
        names = sorted(set(json.loads(before).get("files", {}).values()))
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        try:
            for name in names:
                shutil.copy2(src / name, dst / name)
        except FileNotFoundError:
            continue  # a newer generation replaced these files: copy that one
        if manifest.read_bytes() == before:
            (dst / "manifest.json").write_bytes(before)
            return int(json.loads(before)["generation"])
    raise Conflict(f"the index at {src} changed {INDEX_RETRIES} times while it was copied; retry the backup "
                   "when ingest is quieter", param="index")


@contextmanager
def _adapter_lock(folder: Path) -> Iterator[None]:
    """The registry's own per-adapter lock (``finetune.registry``: NAME/.lock, flock)."""
    with open(folder / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _copy_adapters(src: Path, dst: Path) -> int:
    dst.mkdir(parents=True)
    n = 0
    for folder in sorted(p for p in src.iterdir() if p.is_dir()) if src.exists() else []:
        with _adapter_lock(folder):
            shutil.copytree(folder, dst / folder.name, ignore=shutil.ignore_patterns(".lock", "*.tmp"))
        n += 1
    return n


def _files(root: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(root).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _stats(home: Path) -> dict[str, int]:
    """Row counts that a restore must reproduce."""
    out: dict[str, int] = {}
    for db, tables in (("corpus.sqlite", ("articles", "chunks")),
                       ("app.sqlite", ("api_keys", "answers", "feedback", "retune_jobs", "audit"))):
        if not (home / db).exists():
            continue
        con = sqlite3.connect(f"file:{home / db}?mode=ro", uri=True)
        try:
            have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for t in tables:
                if t in have:
                    out[t] = int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
        finally:
            con.close()
    return out


def create_backup(settings: Settings, dest: Path, *, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Snapshot ``settings.home`` into ``dest`` (absent or empty). Returns the manifest."""
    home = settings.home
    if not home.is_dir():
        raise InvalidInput(f"home {str(home)!r} does not exist: nothing to back up", param="home")
    dest = dest.absolute()
    if dest.exists() and any(dest.iterdir()):
        raise InvalidInput(f"backup folder {str(dest)!r} is not empty", param="dir")
    if dest == home or home in dest.parents:
        raise InvalidInput(f"backup folder {str(dest)!r} is inside the home {str(home)!r}", param="dir")
    dest.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for db in DATABASES:
        if (home / db).exists():
            progress(f"database {db}")
            _copy_db(home / db, dest / db)
    progress("index")
    generation = _copy_index(settings.index_dir, dest / "index")
    progress("adapters")
    adapters = _copy_adapters(settings.adapters_dir, dest / "adapters")
    progress("checksums")
    manifest = {
        "format": FORMAT, "pubmind": pkg_version("pubmind"), "created_at": started, "finished_at": time.time(),
        "source_home": str(home), "index_generation": generation, "adapters": adapters,
        "stats": _stats(dest), "files": _files(dest),
    }
    for p in dest.rglob("*"):
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    write_json_atomic(dest / MANIFEST, manifest)  # last: its presence marks a complete backup
    return manifest


def verify_backup(src: Path) -> dict[str, Any]:
    """The manifest of a complete, intact backup; InvalidInput naming what is missing, changed or extra."""
    mpath = src / MANIFEST
    if not src.is_dir():
        raise InvalidInput(f"backup folder {str(src)!r} does not exist", param="dir")
    if not mpath.exists():
        raise InvalidInput(f"{str(src)!r} is not a complete backup: {MANIFEST} is missing (the backup was "
                           f"interrupted, or this is not a backup folder)", param="dir")
    try:
        manifest = json.loads(mpath.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"{str(mpath)!r} is corrupt: {e}", param="dir") from None
    have = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and p.name != MANIFEST}
    if missing := sorted(set(files) - have):
        raise InvalidInput(f"backup {str(src)!r} is incomplete: missing {missing[:5]}", param="dir")
    if extra := sorted(have - set(files)):
        raise InvalidInput(f"backup {str(src)!r} has files its manifest does not list: {extra[:5]}", param="dir")
    for name, meta in files.items():
        p = src / name
        if p.stat().st_size != meta["bytes"] or _sha256(p) != meta["sha256"]:
            raise InvalidInput(f"backup {str(src)!r} is corrupt: {name} does not match its checksum", param="dir")
    return manifest


def restore_backup(settings: Settings, src: Path, *, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Restore the backup ``src`` into ``settings.home``, which must be absent or empty."""
    home = settings.home
    if home.exists() and any(home.iterdir()):
        raise Conflict(f"home {str(home)!r} is not empty: restore only into an empty home (stop the server, "
                       f"move the old home aside)", param="home")
    progress("verifying checksums")
    manifest = verify_backup(src)
    staging = home.with_name(f".{home.name}.restore-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        progress("copying")
        shutil.copytree(src, staging, ignore=shutil.ignore_patterns(MANIFEST))
        for db in DATABASES:
            if (staging / db).exists():
                con = sqlite3.connect(staging / db)
                try:
                    ok = con.execute("PRAGMA integrity_check").fetchone()[0]
                finally:
                    con.close()
                if ok != "ok":
                    raise InvalidInput(f"backup {str(src)!r}: {db} fails SQLite's integrity check: {ok}",
                                       param="dir")
        got = _stats(staging)
        if got != manifest["stats"]:
            raise InvalidInput(f"backup {str(src)!r}: restored row counts {got} differ from the manifest's "
                               f"{manifest['stats']}", param="dir")
        if home.exists():
            home.rmdir()
        os.replace(staging, home)
        fsync_dir(home.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
