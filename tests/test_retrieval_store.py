"""CorpusStore: upsert/version/delete semantics, chunks and removal queue, filters, FTS5, bookkeeping,
concurrent readers and their bounded connections."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from pubmind.errors import InvalidInput
from pubmind.records import Deletion
from retrieval.chunking import Chunker, make_chunk_id, pmid_of
from retrieval.filters import filter_sql
from retrieval.schema import MIGRATIONS, SCHEMA_VERSION, split_sql
from retrieval.store import CorpusStore, Filters, fts_query
from tests.fixtures_retrieval import make_article, mesh, retraction


@pytest.fixture()
def chunker(minilm_tokenizer, settings) -> Chunker:
    return Chunker(minilm_tokenizer, settings.chunking)


@pytest.fixture()
def store(settings):
    s = CorpusStore(settings.corpus_db)
    yield s
    s.close()


def states(store: CorpusStore) -> dict[int, int]:
    return dict(store._query("SELECT chunk_id, state FROM chunks"))


def test_schema_wal_and_reopen(store: CorpusStore, settings) -> None:
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.stats()["schema_version"] == SCHEMA_VERSION
    store.close()
    again = CorpusStore(settings.corpus_db)  # migrations are not re-applied
    assert again._query("SELECT COUNT(*) FROM schema_version")[0][0] == SCHEMA_VERSION
    again.close()


def fts_consistent(store: CorpusStore) -> None:
    """FTS5's integrity check against its content table (raises sqlite3.DatabaseError if they differ)."""
    store._query("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")


def test_fts_term_buffer_is_raised_for_bulk_writes(store: CorpusStore) -> None:
    """Schema 3: FTS5 keeps up to 64 MiB of new terms in memory per transaction (default 1 MiB)."""
    rows = dict(store._query("SELECT k, v FROM chunks_fts_config"))
    assert rows["hashsize"] == 64 * 2**20


def test_fts_merges_sixteen_segments_at_a_time(store: CorpusStore) -> None:
    """Schema 4: FTS5 merges 16 segments of a level at once (default 4): fewer rewrites of each posting."""
    rows = dict(store._query("SELECT k, v FROM chunks_fts_config"))
    assert rows["automerge"] == 16


def test_fts_is_written_by_the_store_not_row_triggers(store: CorpusStore) -> None:
    assert store._query("SELECT name FROM sqlite_master WHERE type = 'trigger'") == []


def test_fts_stays_consistent_through_a_mixed_batch(store: CorpusStore, chunker: Chunker) -> None:
    store.apply([make_article(p, sentences=8) for p in range(1, 21)], chunker)
    store.apply([
        make_article(1, version=2, title="Axolotl limb regeneration", sentences=8),  # changed texts
        make_article(2, version=2, sentences=2),  # shrinks: chunks removed
        Deletion((3, 4)),
        make_article(5),  # unchanged
        make_article(21, title="Zebrafish fins"),  # new
    ], chunker)
    fts_consistent(store)
    assert {pmid_of(c) for c, _ in store.fts_search("axolotl", 10)} == {1}
    assert {pmid_of(c) for c, _ in store.fts_search("zebrafish", 10)} == {21}
    assert not {3, 4} & {pmid_of(c) for c, _ in store.fts_search("study", 1000)}


def test_version_1_store_is_migrated(settings, chunker: Chunker) -> None:
    """A store made by schema version 1 (FTS kept by triggers) opens, loses the triggers, keeps its FTS
    rows, and stays consistent under new writes."""
    settings.corpus_db.parent.mkdir(parents=True)
    db = sqlite3.connect(settings.corpus_db, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    for stmt in split_sql(MIGRATIONS[1]):
        db.execute(stmt)
    db.execute("INSERT INTO schema_version VALUES (1, 0)")
    db.execute("INSERT INTO chunks (chunk_id, pmid, seq, text) VALUES (7000, 7, 0, 'Okapi stripes')")  # via trigger
    db.close()
    store = CorpusStore(settings.corpus_db)
    try:
        assert store.stats()["schema_version"] == SCHEMA_VERSION
        assert store._query("SELECT name FROM sqlite_master WHERE type = 'trigger'") == []
        assert dict(store._query("SELECT k, v FROM chunks_fts_config"))["hashsize"] == 64 * 2**20
        assert dict(store._query("SELECT k, v FROM chunks_fts_config"))["automerge"] == 16
        assert [c for c, _ in store.fts_search("okapi", 5)] == [7000]
        store.apply([make_article(8, title="Okapi habitat")], chunker)
        fts_consistent(store)
        assert {pmid_of(c) for c, _ in store.fts_search("okapi", 5)} == {7, 8}
    finally:
        store.close()


def test_insert_get_and_chunks(store: CorpusStore, chunker: Chunker) -> None:
    a = make_article(101, doi="10.1/x", pmc="PMC1")
    r = store.apply([a, make_article(102)], chunker)
    assert (r.inserted, r.updated, r.unchanged) == (2, 0, 0)
    assert store.get(101) == a
    assert store.get(999) is None
    assert set(store.get_many([101, 102, 999])) == {101, 102}
    chunks = store.chunk_ids_of([101])[101]
    assert chunks[0] == make_chunk_id(101, 0)
    assert make_chunk_id(101, 0) == 101_000
    text = store.chunk_text(chunks)[chunks[0]]
    assert text.startswith(a.title + "\n")
    assert "BACKGROUND: " in text
    assert "RESULTS: " in text
    assert store.count_pending() == r.chunks_added
    assert r.chunks_added > 0
    assert store._query("SELECT doi, pmc FROM articles WHERE pmid = 101")[0] == ("10.1/x", "PMC1")


def test_version_semantics(store: CorpusStore, chunker: Chunker) -> None:
    v2 = make_article(7, version=2, sentences=4)
    store.apply([v2], chunker)
    store.mark_indexed(list(states(store)))
    # same record again: no-op, chunks stay indexed
    r = store.apply([v2], chunker)
    assert (r.unchanged, r.chunks_added, r.chunks_removed) == (1, 0, 0)
    assert set(states(store).values()) == {1}
    # older version: ignored
    r = store.apply([make_article(7, version=1, title="old")], chunker)
    assert r.older == 1
    assert store.get(7) == v2
    # newer version with another text: replaces article and its (changed) chunks -> pending
    v3 = make_article(7, version=3, title="Completely new title", sentences=4)
    r = store.apply([v3], chunker)
    assert r.updated == 1
    assert store.get(7) == v3
    assert set(states(store).values()) == {0}
    # same version, revised record (e.g. MeSH added in an update file), same text: chunks keep state
    store.mark_indexed(list(states(store)))
    v3b = make_article(7, version=3, title="Completely new title", sentences=4, mesh=mesh("Humans"))
    assert v3b.abstract == v3.abstract
    r = store.apply([v3b], chunker)
    assert (r.updated, r.chunks_added) == (1, 0)
    assert store.get(7) == v3b
    assert set(states(store).values()) == {1}


def test_versions_in_one_batch_keep_highest(store: CorpusStore, chunker: Chunker) -> None:
    r = store.apply([make_article(5, 2), make_article(5, 4), make_article(5, 3)], chunker)
    assert (r.inserted, r.updated, r.older) == (1, 1, 1)
    assert store.get(5).version == 4


def test_shrinking_update_queues_removed_chunks(store: CorpusStore, chunker: Chunker) -> None:
    long = make_article(9, sentences=40)
    store.apply([long], chunker)
    n_long = len(store.chunk_ids_of([9])[9])
    assert n_long >= 3
    r = store.apply([make_article(9, version=2, sentences=2)], chunker)
    assert r.chunks_removed == n_long - 1
    assert store.removed_pending().tolist() == [9000 + i for i in range(1, n_long)]
    store.mark_indexed([], store.removed_pending())
    assert len(store.removed_pending()) == 0


def test_deletion(store: CorpusStore, chunker: Chunker) -> None:
    store.apply([make_article(1, mesh=mesh("Humans")), make_article(2)], chunker)
    ids1 = store.chunk_ids_of([1])[1]
    r = store.apply([Deletion((1, 3))], chunker)
    assert (r.deleted, r.missing_deletes, r.chunks_removed) == (1, 1, len(ids1))
    assert store.get(1) is None
    assert store.chunk_ids_of([1]) == {}
    assert store.removed_pending().tolist() == ids1
    assert store._query("SELECT COUNT(*) FROM article_mesh")[0][0] == 0
    assert store.fts_search("study", 10)
    assert all(pmid_of(c) == 2 for c, _ in store.fts_search("study", 10))
    # delete then re-add in one batch: the article is back
    r = store.apply([Deletion((2,)), make_article(2, title="Back again")], chunker)
    assert store.get(2).title == "Back again"


def test_apply_is_one_transaction(store: CorpusStore, chunker: Chunker) -> None:
    class Boom:
        def chunk_many(self, arts):
            raise RuntimeError("chunker crashed")

    store.apply([make_article(1)], chunker)
    before = store.stats()
    with pytest.raises(RuntimeError, match="chunker crashed"):
        store.apply([Deletion((1,)), make_article(2)], Boom())
    assert store.stats() == before
    assert store.get(1) is not None
    assert store.get(2) is None


def test_filters(store: CorpusStore, chunker: Chunker) -> None:
    arts = [
        make_article(1, year=2001, journal="Nature Medicine", journal_iso="Nat Med", mesh=mesh("Humans", "Insulin", major=("Insulin",)),
                     publication_types=("Journal Article", "Randomized Controlled Trial"), languages=("eng",)),
        make_article(2, year=2010, journal="The Lancet", journal_iso="Lancet", mesh=mesh("Humans", "Mice"),
                     publication_types=("Review",), languages=("fre", "eng")),
        make_article(3, year=2020, journal="Nature Medicine", journal_iso="Nat Med", mesh=mesh("Mice", "Insulin"),
                     publication_types=("Journal Article", "Retracted Publication"), languages=("ger",)),
        make_article(4, year=None, journal="Cell", mesh=(), comments_corrections=retraction(), languages=("spa",)),
    ]
    store.apply(arts, chunker)

    def pm(**kw) -> list[int]:
        return store.allowed_pmids(Filters(**kw)).tolist()

    assert pm() == [1, 2, 3, 4]
    assert pm(year_from=2005) == [2, 3]
    assert pm(year_to=2010) == [1, 2]
    assert pm(year_from=2001, year_to=2001) == [1]
    assert pm(journals=("nat med",)) == [1, 3]  # ISO abbreviation, any case
    assert pm(journals=("THE LANCET", "cell")) == [2, 4]
    assert pm(mesh=("insulin",)) == [1, 3]
    assert pm(mesh=("insulin",), mesh_major_only=True) == [1]
    assert pm(mesh=("Mice", "Insulin")) == [1, 2, 3]  # any of
    assert pm(publication_types=("review",)) == [2]
    assert pm(languages=("eng",)) == [1, 2]
    assert pm(exclude_retracted=True) == [1, 2]
    assert pm(journals=("Nat Med",), mesh=("Mice",), year_from=2015) == [3]
    assert pm(journals=("Nat Med",), exclude_retracted=True, languages=("eng",)) == [1]
    chunk_ids = store.allowed_chunk_ids(Filters(mesh=("Mice",)))
    assert chunk_ids.dtype == np.int64
    assert sorted({pmid_of(c) for c in chunk_ids}) == [2, 3]
    assert store.filter_pmids([1, 2, 3, 99], Filters(exclude_retracted=True)) == {1, 2}
    with pytest.raises(InvalidInput, match="year_from=2020"):
        pm(year_from=2020, year_to=2000)
    with pytest.raises(InvalidInput, match="mesh_major_only"):
        pm(mesh_major_only=True)
    # every filter column is served by an index (no full scan of articles)
    sql, params = filter_sql(Filters(year_from=2000, journals=("x",), mesh=("y",), languages=("eng",),
                                           publication_types=("Review",), exclude_retracted=True))
    plan = " ".join(r[3] for r in store._query("EXPLAIN QUERY PLAN " + sql, params))
    assert "SCAN a" not in plan, plan
    assert "SCAN articles" not in plan, plan


def test_fts_search_ranking_filters_and_nasty_input(store: CorpusStore, chunker: Chunker) -> None:
    store.apply([
        make_article(1, title="Mitochondria in programmed cell death of lace plants", year=2011),
        make_article(2, title="COVID-19 vaccines and NEAR-infrared imaging", year=2021),
        make_article(3, title="Glucagon signalling in hepatic tissue", year=2015),
    ], chunker)
    top = store.fts_search("mitochondrial cell death", 5)
    assert pmid_of(top[0][0]) == 1
    assert top[0][1] > 0
    assert top == sorted(top, key=lambda x: -x[1])
    assert pmid_of(store.fts_search("COVID-19 vaccine", 5)[0][0]) == 2
    nasty = ['COVID-19 "AND" NEAR(', 'a" OR "b', "NOT", "*", "^foo", "col:umn", "(((", "AND OR NOT", "'", "",
             "   ", "é ß ∑ 🧬", "x" * 5000, "NEAR(a b, 3)", '""', "-", "the of and"]
    for q in nasty:
        assert isinstance(store.fts_search(q, 5), list)
        assert isinstance(store.fts_search(q, 5, Filters(year_from=2000)), list)
    assert fts_query("the of and") is None
    assert fts_query("") is None
    assert store.fts_search("glucagon", 5, Filters(year_to=2012)) == []
    assert pmid_of(store.fts_search("glucagon hepatic", 5, Filters(year_from=2012))[0][0]) == 3
    with pytest.raises(InvalidInput, match="limit"):
        store.fts_search("x", 0)


def test_fts_follows_updates_and_deletes(store: CorpusStore, chunker: Chunker) -> None:
    store.apply([make_article(1, title="Zebrafish heart regeneration")], chunker)
    assert store.fts_search("zebrafish", 5)
    store.apply([make_article(1, version=2, title="Axolotl limb regeneration")], chunker)
    assert store.fts_search("zebrafish", 5) == []
    assert store.fts_search("axolotl", 5)
    store.apply([Deletion((1,))], chunker)
    assert store.fts_search("axolotl", 5) == []
    assert store.fts_search("regeneration", 5) == []
    fts_consistent(store)  # the FTS index is consistent with its content table


def test_file_bookkeeping(store: CorpusStore) -> None:
    assert not store.file_done("pubmed25n0001.xml.gz", "abc")
    store.mark_file("pubmed25n0001.xml.gz", "abc", {"articles": 3})
    assert store.file_done("pubmed25n0001.xml.gz", "abc")
    assert not store.file_done("pubmed25n0001.xml.gz", "other-md5")
    assert store.files()["pubmed25n0001.xml.gz"]["counts"] == {"articles": 3}


def test_concurrent_readers_while_writing(store: CorpusStore, chunker: Chunker) -> None:
    store.apply([make_article(p) for p in range(1, 50)], chunker)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                assert store.get(1) is not None
                assert store.fts_search("study cell", 5)
                store.allowed_chunk_ids(Filters(year_from=2000))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for v in range(2, 6):
        store.apply([make_article(p, version=v) for p in range(1, 50)], chunker)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get(49).version == 5


def test_readers_see_committed_data_only(store: CorpusStore, chunker: Chunker, settings) -> None:
    store.apply([make_article(1)], chunker)
    reader = sqlite3.connect(settings.corpus_db)
    assert reader.execute("SELECT COUNT(*) FROM articles").fetchone()[0] == 1
    reader.close()


def open_fds(path) -> int:
    """File descriptors of this process open on ``path`` (the database file itself)."""
    fd_dir = Path("/proc/self/fd")
    target = str(Path(path).resolve())
    n = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            n += os.readlink(fd) == target
    return n


def test_readers_on_short_lived_threads_do_not_leak_connections(store: CorpusStore, chunker: Chunker,
                                                                 settings) -> None:
    """Servers read on worker threads that come and go (anyio retires idle ones): bursts of fresh threads
    must not leave one connection (one open file) each behind."""
    store.apply([make_article(1)], chunker)
    before = open_fds(settings.corpus_db)
    for _burst in range(5):
        threads = [threading.Thread(target=store.get, args=(1,)) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert open_fds(settings.corpus_db) - before <= 8  # the pool's bound, not 5 x 40 connections
