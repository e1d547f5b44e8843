"""The parse workers' allocator (ingest.worker_malloc): jemalloc preloaded into spawned workers only."""

from __future__ import annotations

import ctypes.util
import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import spawn
from pathlib import Path

import pytest

from ingest import malloc
from ingest.pipeline import Pipeline
from pubmind.errors import ConfigError
from retrieval.indexer import Indexer
from tests.test_ingest_parallel import REAL

JEMALLOC = ctypes.util.find_library("jemalloc")
needs_jemalloc = pytest.mark.skipif(
    JEMALLOC is None, reason="libjemalloc is not installed (scripts/setup.sh installs it: apt-get install libjemalloc2)")


def _mapped(name: str) -> bool:
    """In a worker: whether a library whose file name contains ``name`` is mapped into this process."""
    return name in Path("/proc/self/maps").read_text()


def _pool_maps(name: str, n: int = 2) -> list[bool]:
    """Start ``n`` spawned workers and ask each whether ``name`` is mapped."""
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_mapped, [name] * n))


def test_resolve(monkeypatch, tmp_path):
    assert malloc.resolve("system") is None
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert malloc.resolve("auto") is None  # not installed: the C library's malloc
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: f"lib{name}.so.2")
    assert malloc.resolve("auto") == "libjemalloc.so.2"
    assert malloc.resolve("libmimalloc.so.2") == "libmimalloc.so.2"  # a soname: the loader finds it
    with pytest.raises(ConfigError) as e:
        malloc.resolve(str(tmp_path / "nothere.so"))
    assert e.value.param == "ingest.worker_malloc" and "nothere.so" in e.value.message and "no such file" in e.value.message


@needs_jemalloc
def test_spawned_workers_get_jemalloc_inside_only(tmp_path):
    before = spawn.get_executable()
    with malloc.workers_malloc("auto", tmp_path) as name:
        assert name == JEMALLOC
        assert _pool_maps("libjemalloc") == [True, True]
        assert not _mapped("libjemalloc")  # this process keeps its allocator
        assert len(list(tmp_path.glob("python-*.sh"))) == 1
    assert spawn.get_executable() == before
    assert not list(tmp_path.glob("python-*.sh"))  # the launcher is removed
    assert _pool_maps("libjemalloc") == [False, False]
    with malloc.workers_malloc("system", tmp_path) as name:
        assert name == malloc.SYSTEM
        assert _pool_maps("libjemalloc") == [False, False]


@needs_jemalloc
def test_overlapping_pools_share_the_launcher(tmp_path):
    before = spawn.get_executable()
    outer = malloc.workers_malloc("auto", tmp_path)
    outer.__enter__()
    with malloc.workers_malloc("auto", tmp_path / "other"):
        assert len(list(tmp_path.glob("python-*.sh"))) == 1 and not (tmp_path / "other").exists()
    assert spawn.get_executable() != before  # the outer pool is still open
    assert _pool_maps("libjemalloc", 1) == [True]
    outer.__exit__(None, None, None)
    assert spawn.get_executable() == before


def test_unloadable_library(monkeypatch, tmp_path, caplog):
    before = spawn.get_executable()
    not_a_lib = tmp_path / "notalib.so"
    not_a_lib.write_text("this is not a shared library")
    with pytest.raises(ConfigError) as e, malloc.workers_malloc(str(not_a_lib), tmp_path):
        pass
    assert e.value.param == "ingest.worker_malloc" and str(not_a_lib) in e.value.message
    assert "does not start with it loaded" in e.value.message
    # auto with a library the loader cannot find: the C library's malloc, and the log says why
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libpubmind-none.so.9")
    with caplog.at_level(logging.WARNING, "pubmind.ingest"), malloc.workers_malloc("auto", tmp_path) as name:
        assert name == malloc.SYSTEM
        assert spawn.get_executable() == before
    assert "libpubmind-none.so.9" in caplog.text and "C library's malloc" in caplog.text
    assert not list(tmp_path.glob("python-*.sh"))


@needs_jemalloc
def test_pipeline_logs_the_workers_allocator(make_settings, hash_embedder, caplog):
    s = make_settings(ingest={"workers": 2})
    before = spawn.get_executable()
    with caplog.at_level(logging.INFO, "pubmind.ingest"), Indexer(s, hash_embedder) as ix, \
            Pipeline(s, indexer=ix, progress=False) as p:
        rep = p.ingest_files(REAL[:2])
    assert [f.status for f in rep.files] == ["ingested", "ingested"]
    assert f"2 parse processes ({JEMALLOC})" in caplog.text
    assert rep.summary()["parse_workers"] == f"2 processes ({JEMALLOC})"
    assert spawn.get_executable() == before
    assert not list(s.ingest_dir.glob("python-*.sh"))
