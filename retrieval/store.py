"""Corpus store: one SQLite file (WAL) with articles, normalised filter tables, chunks and an FTS5 index.

Tables (schema version 2):
  articles(pmid PK, version, year, journal, journal_iso, language, retracted, doi, pmc, record)  record =
      msgspec JSON of ``pubmind.records.Article``
  article_mesh(pmid, descriptor, major) / article_pubtypes(pmid, ptype) / article_languages(pmid, language)
  chunks(chunk_id PK = pmid*1000+seq, pmid, seq, text, state)  state 0 = pending embedding, 1 = indexed
  chunks_fts  FTS5 over chunks.text (external content, porter + unicode61), written with the chunks
  removed_chunks(chunk_id)  chunk ids deleted from the store that may still be in the vector index
  files(path, md5, counts, done_at)  ingest bookkeeping for resumable file ingest
  meta(key, value)  e.g. the chunking configuration the chunks were made with
One writer at a time (the Indexer); any number of readers (WAL) through a bounded pool of connections.
Schema: ``retrieval.schema``; filter SQL: ``retrieval.filters``; BM25 SQL: ``retrieval.fts``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np

from pubmind.durable import ReaderPool, connect, immediate
from pubmind.errors import ConfigError, InvalidInput
from pubmind.records import Article, Deletion, article_from_json, article_to_json
from retrieval import fts
from retrieval.chunking import Chunk
from retrieval.filters import Filters, filter_sql
from retrieval.fts import fts_query
from retrieval.schema import MIGRATIONS, SCHEMA_VERSION, split_sql

__all__ = ["ApplyResult", "CorpusStore", "Filters", "fts_query"]  # Filters, fts_query: re-exported

class ApplyResult(msgspec.Struct, kw_only=True):
    inserted: int = 0  # new PMIDs
    updated: int = 0  # newer version, or same version with a changed record (revised citation)
    unchanged: int = 0  # identical record already stored
    older: int = 0  # older version than stored: ignored
    deleted: int = 0
    missing_deletes: int = 0  # Deletion of a PMID not in the store
    chunks_added: int = 0  # new or changed chunk texts (pending embedding)
    chunks_removed: int = 0

    def __iadd__(self, other: ApplyResult) -> ApplyResult:
        for f in self.__struct_fields__:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self

    def to_dict(self) -> dict[str, int]:
        return msgspec.structs.asdict(self)


class ChunkerLike(Protocol):
    def chunk_many(self, articles: Sequence[Article]) -> list[list[Chunk]]: ...


def _json_ids(ids: Iterable[int]) -> str:
    return json.dumps([int(i) for i in ids])


class CorpusStore:
    """The corpus store at ``path``. Thread-safe: writes go through one connection behind a lock, reads
    through at most ``readers`` pooled connections, whatever the number of threads (WAL: readers never
    block the single writer, nor it them)."""

    def __init__(self, path: str | Path, *, readers: int = 8) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = connect(self.path)
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._readers = ReaderPool(self.path, readers, cache_kib=16384)  # 16 MiB page cache each
        # Write tracking, for an index sync that runs while records are applied (``Indexer.sync_async``):
        # ``_seq`` counts committed apply() transactions; while tracking, ``_written`` maps each chunk id
        # written (added, changed or removed) to the number its transaction committed as.
        self._seq = 0
        self._written: dict[int, int] | None = None
        # mark_indexed() calls queued by a background index sync (``queue_mark``): the next apply() runs them
        # before its own transaction, so the sync never waits for a transaction in progress.
        self._marks: list[tuple[Any, ...]] = []
        self._marks_lock = threading.Lock()
        self._marks_skipped = 0  # ids the queued marks left out (see mark_indexed), until taken
        self._migrate()

    # ---- plumbing -------------------------------------------------------------------------------
    def _migrate(self) -> None:
        try:  # fast path without the write lock (readers open while a writer holds a transaction)
            if self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION:
                return
        except sqlite3.OperationalError:
            pass  # no schema_version table yet
        with self._txn() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"corpus store {self.path} has schema version {current}, this pubmind knows up to "
                    f"{SCHEMA_VERSION}; upgrade pubmind"
                )
            for v in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in split_sql(MIGRATIONS[v]):
                    db.execute(stmt)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (v, time.time()))

    def _txn(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._readers.query(sql, params)

    def close(self) -> None:
        with self._lock:
            try:  # the index holds them: recording it saves re-embedding them. Only while writes are tracked
                if self._written is not None:  # (else a rewritten chunk could not be told): else left pending
                    self._drain_marks()
            finally:
                self._readers.close()
                self._db.close()

    def __enter__(self) -> CorpusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes ---------------------------------------------------------------------------------
    def apply(self, records: Sequence[Article | Deletion], chunker: ChunkerLike, *, force: bool = False) -> ApplyResult:
        """Apply records in order, in ONE transaction. Newer version replaces the stored article and its
        chunks; an older version is ignored; the same version replaces it only if the record changed
        (PubMed update files revise citations without bumping Version); Deletion removes article + chunks.
        Chunks whose text is unchanged keep their state (no re-embedding). ``force`` re-chunks identical
        records too (after a chunking change)."""
        res = ApplyResult()
        if self._marks:
            with self._lock:
                self._drain_marks()
        pmids = {p for r in records for p in (r.pmids if isinstance(r, Deletion) else (r.pmid,))}
        with self._txn() as db:
            stored: dict[int, tuple[int, bytes] | None] = dict.fromkeys(pmids)
            for pmid, version, rec in db.execute(
                "SELECT pmid, version, record FROM articles WHERE pmid IN (SELECT value FROM json_each(?))",
                (_json_ids(pmids),),
            ):
                stored[pmid] = (version, bytes(rec))
            final: dict[int, tuple[Article, bytes] | None] = {}  # pmid -> new article, or None = delete
            for r in records:
                if isinstance(r, Deletion):
                    for p in r.pmids:
                        if stored[p] is None:
                            res.missing_deletes += 1
                        else:
                            res.deleted += 1
                            stored[p] = None
                            final[p] = None
                    continue
                assert isinstance(r, Article), f"records must be Article or Deletion, got {type(r).__name__}"
                blob = article_to_json(r)
                old = stored[r.pmid]
                if old is None:
                    res.inserted += 1
                elif r.version < old[0]:
                    res.older += 1
                    continue
                elif r.version == old[0] and blob == old[1] and not force:
                    res.unchanged += 1
                    continue
                else:
                    res.updated += 1
                stored[r.pmid] = (r.version, blob)
                final[r.pmid] = (r, blob)
            if final:
                self._write(db, final, chunker, res)
        with self._lock:
            self._seq += 1  # after the commit: a reader that saw this seq may not have seen these writes
        return res

    def _write(self, db: sqlite3.Connection, final: dict[int, tuple[Article, bytes] | None], chunker: ChunkerLike,
               res: ApplyResult) -> None:
        """Write the final state of every touched PMID (None = delete): articles, filter rows, chunks."""
        touched = _json_ids(final)
        old_chunks: dict[int, str] = dict(
            db.execute("SELECT chunk_id, text FROM chunks WHERE pmid IN (SELECT value FROM json_each(?))", (touched,))
        )
        for table in ("article_mesh", "article_pubtypes", "article_languages"):
            db.execute(f"DELETE FROM {table} WHERE pmid IN (SELECT value FROM json_each(?))", (touched,))
        gone = [p for p, v in final.items() if v is None]
        if gone:
            db.execute("DELETE FROM articles WHERE pmid IN (SELECT value FROM json_each(?))", (_json_ids(gone),))
        upserts = [v for v in final.values() if v is not None]
        new_chunks: dict[int, str] = {}
        if upserts:
            new_chunks = {c.chunk_id: c.text for cs in chunker.chunk_many([a for a, _ in upserts]) for c in cs}
            _write_articles(db, upserts)
        written = _write_chunks(db, old_chunks, new_chunks, res)
        if self._written is not None:
            self._written.update(dict.fromkeys(written, self._seq + 1))  # committed as seq + 1

    # ---- write tracking (an index sync concurrent with apply) -----------------------------------
    def track_writes(self, on: bool) -> None:
        """Start (forgetting what was tracked before) or stop recording which chunk ids apply() writes."""
        with self._lock:
            self._written = {} if on else None

    def write_seq(self) -> int:
        """Number of committed apply() transactions. Read it BEFORE reading chunks or removals to index:
        everything committed up to it is visible to the reads that follow."""
        return self._seq

    def mark_indexed(self, chunk_ids: Sequence[int] | np.ndarray, removed_done: Sequence[int] | np.ndarray = (),
                     read_seq: int | Sequence[int] | np.ndarray | None = None, removed_seq: int | None = None) -> int:
        """After an index save: these chunks are in it, and these removed ids are out of it. One transaction.
        ``read_seq``: the ``write_seq()`` taken before the texts were read (one for all, or one per chunk id:
        the page it came in); ``removed_seq``: the same for the removals (default: the smallest read_seq).
        While writes are tracked, ids that apply() wrote in a later transaction than their read are left
        out (their text changed, or they were deleted or re-added, after the read): they stay pending, or
        queued for removal, for the next sync. Returns how many ids were left out. Marks queued before
        (``queue_mark``) are recorded first."""
        with self._lock:
            self._drain_marks()
            return self._mark_indexed(chunk_ids, removed_done, read_seq, removed_seq)

    def queue_mark(self, chunk_ids: Sequence[int] | np.ndarray, removed_done: Sequence[int] | np.ndarray = (),
                   read_seq: int | Sequence[int] | np.ndarray | None = None, removed_seq: int | None = None) -> None:
        """``mark_indexed`` later: at the start of the next ``apply()`` (in its thread, before its own
        transaction), or first thing in the next ``mark_indexed``, or at ``close()``. For an index sync that
        runs beside apply(): it never waits for a transaction in progress (a commit that merges FTS5 segments
        takes seconds at scale). Until then the chunks stay pending: a crash re-embeds them, nothing worse.
        What they leave out is counted by ``take_marks_skipped``."""
        with self._marks_lock:
            self._marks.append((chunk_ids, removed_done, read_seq, removed_seq))

    def record_queued_marks(self) -> None:
        """Record the marks ``queue_mark`` queued, now (e.g. when a background sync stopped early)."""
        with self._lock:
            self._drain_marks()

    def take_marks_skipped(self) -> int:
        """Ids the queued marks recorded since the last call left out (``mark_indexed``'s return value)."""
        with self._marks_lock:
            n, self._marks_skipped = self._marks_skipped, 0
        return n

    def _drain_marks(self) -> None:
        """Record the queued marks (caller holds ``_lock``)."""
        with self._marks_lock:
            todo, self._marks = self._marks, []
        for args in todo:
            skipped = self._mark_indexed(*args)
            with self._marks_lock:
                self._marks_skipped += skipped

    def _mark_indexed(self, chunk_ids: Sequence[int] | np.ndarray, removed_done: Sequence[int] | np.ndarray,
                      read_seq: int | Sequence[int] | np.ndarray | None, removed_seq: int | None) -> int:
        with self._txn() as db:  # re-enters the RLock the caller holds
            skipped = 0
            if self._written and read_seq is not None:
                ids = np.asarray(chunk_ids, np.int64)
                seq = np.broadcast_to(np.asarray(read_seq, np.int64), ids.shape)
                if removed_seq is None:
                    removed_seq = int(seq.min()) if len(seq) else 0
                written = self._written
                keep = [int(c) for c, s in zip(ids.tolist(), seq.tolist(), strict=True) if written.get(c, -1) <= s]
                gone = [int(c) for c in removed_done if written.get(int(c), -1) <= removed_seq]
                skipped = len(ids) + len(removed_done) - len(keep) - len(gone)
                chunk_ids, removed_done = keep, gone
                newest = max(int(seq.max()) if len(seq) else 0, removed_seq)  # later reads see all up to it
                self._written = {c: s for c, s in written.items() if s > newest}
            db.execute("UPDATE chunks SET state = 1 WHERE chunk_id IN (SELECT value FROM json_each(?))",
                       (_json_ids(chunk_ids),))
            db.execute("DELETE FROM removed_chunks WHERE chunk_id IN (SELECT value FROM json_each(?))",
                       (_json_ids(removed_done),))
        return skipped

    def reset_indexed(self) -> None:
        """Mark every chunk pending and forget removals (the vector index is being rebuilt from scratch)."""
        with self._txn() as db:
            db.execute("UPDATE chunks SET state = 0 WHERE state != 0")
            db.execute("DELETE FROM removed_chunks")

    def set_meta(self, key: str, value: str) -> None:
        with self._txn() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def mark_file(self, path: str, md5: str, counts: dict[str, Any]) -> None:
        with self._txn() as db:
            db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?)", (path, md5, json.dumps(counts), time.time()))

    # ---- reads ----------------------------------------------------------------------------------
    def file_done(self, path: str, md5: str) -> bool:
        """True if ``path`` was fully ingested with this md5."""
        return bool(self._query("SELECT 1 FROM files WHERE path = ? AND md5 = ?", (path, md5)))

    def files(self) -> dict[str, dict[str, Any]]:
        return {p: {"md5": m, "counts": json.loads(c), "done_at": t}
                for p, m, c, t in self._query("SELECT path, md5, counts, done_at FROM files")}

    def get(self, pmid: int) -> Article | None:
        rows = self._query("SELECT record FROM articles WHERE pmid = ?", (pmid,))
        return article_from_json(rows[0][0]) if rows else None

    def get_many(self, pmids: Iterable[int]) -> dict[int, Article]:
        rows = self._query("SELECT pmid, record FROM articles WHERE pmid IN (SELECT value FROM json_each(?))",
                           (_json_ids(pmids),))
        return {p: article_from_json(r) for p, r in rows}

    def iter_articles(self, batch: int = 1000) -> Iterator[list[Article]]:
        """All stored articles in PMID order, ``batch`` at a time (keyset pagination: constant memory)."""
        after = 0
        while rows := self._query("SELECT pmid, record FROM articles WHERE pmid > ? ORDER BY pmid LIMIT ?",
                                  (after, batch)):
            after = rows[-1][0]
            yield [article_from_json(r) for _, r in rows]

    def versions(self, pmids: Iterable[int]) -> dict[int, int]:
        rows = self._query("SELECT pmid, version FROM articles WHERE pmid IN (SELECT value FROM json_each(?))",
                           (_json_ids(pmids),))
        return dict(rows)

    def pending_chunks(self, limit: int, after: int = -1) -> list[tuple[int, str]]:
        """Up to ``limit`` (chunk_id, text) waiting for embedding, chunk_id > ``after``, ascending."""
        return self._query("SELECT chunk_id, text FROM chunks WHERE state = 0 AND chunk_id > ? "
                           "ORDER BY chunk_id LIMIT ?", (after, limit))

    def has_chunks(self) -> bool:
        return bool(self._query("SELECT 1 FROM chunks LIMIT 1"))

    def count_pending(self) -> int:
        return self._query("SELECT COUNT(*) FROM chunks WHERE state = 0")[0][0]

    def removed_pending(self) -> np.ndarray:
        """(n,) int64 chunk ids deleted from the store that may still be in the vector index."""
        rows = self._query("SELECT chunk_id FROM removed_chunks ORDER BY chunk_id")
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def chunk_text(self, chunk_ids: Iterable[int]) -> dict[int, str]:
        return dict(self._query("SELECT chunk_id, text FROM chunks WHERE chunk_id IN (SELECT value FROM json_each(?))",
                                (_json_ids(chunk_ids),)))

    def chunk_ids_of(self, pmids: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for cid, pmid in self._query("SELECT chunk_id, pmid FROM chunks WHERE pmid IN (SELECT value FROM "
                                     "json_each(?)) ORDER BY chunk_id", (_json_ids(pmids),)):
            out.setdefault(pmid, []).append(cid)
        return out

    def stats(self) -> dict[str, int]:
        q = self._query
        return {
            "articles": q("SELECT COUNT(*) FROM articles")[0][0],
            "chunks": q("SELECT COUNT(*) FROM chunks")[0][0],
            "pending_chunks": self.count_pending(),
            "removed_pending": q("SELECT COUNT(*) FROM removed_chunks")[0][0],
            "retracted": q("SELECT COUNT(*) FROM articles WHERE retracted = 1")[0][0],
            "files": q("SELECT COUNT(*) FROM files")[0][0],
            "schema_version": q("SELECT MAX(version) FROM schema_version")[0][0],
        }

    # ---- filters and lexical search -------------------------------------------------------------
    def allowed_pmids(self, filters: Filters) -> np.ndarray:
        """(n,) int64 sorted PMIDs passing the filters (all stored PMIDs if the filters are empty)."""
        fs = filter_sql(filters) or ("SELECT a.pmid FROM articles a", [])
        rows = self._query(fs[0] + " ORDER BY a.pmid", fs[1])
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def allowed_chunk_ids(self, filters: Filters) -> np.ndarray:
        """(n,) int64 sorted chunk ids of articles passing the filters (for ``VectorIndex.search(allowed=)``)."""
        fs = filter_sql(filters)
        sql = "SELECT chunk_id FROM chunks" + (f" WHERE pmid IN ({fs[0]})" if fs else "") + " ORDER BY chunk_id"
        rows = self._query(sql, fs[1] if fs else [])
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def filter_pmids(self, pmids: Iterable[int], filters: Filters | None) -> set[int]:
        """The subset of ``pmids`` that is stored and passes the filters (post-filtering candidates)."""
        fs = filter_sql(filters)
        sql = "SELECT a.pmid FROM articles a WHERE a.pmid IN (SELECT value FROM json_each(?))"
        params: list[Any] = [_json_ids(pmids)]
        if fs:
            sql += f" AND a.pmid IN ({fs[0]})"
            params += fs[1]
        return {r[0] for r in self._query(sql, params)}

    def fts_search(self, query: str, limit: int, filters: Filters | None = None) -> list[tuple[int, float]]:
        """BM25 top-``limit`` (chunk_id, score), best first; score = -bm25() (higher is better).
        Any user text is safe (see ``fts_query``); filters apply before the limit."""
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}", param="limit")
        match = fts_query(query)
        if match is None:
            return []
        sql, params = fts.search_sql(match, limit, filter_sql(filters))
        return [(int(r[0]), float(r[1])) for r in self._query(sql, params)]


def _write_articles(db: sqlite3.Connection, upserts: list[tuple[Article, bytes]]) -> None:
    """Upsert articles (record = their msgspec JSON) and their filter rows (old filter rows already gone)."""
    db.executemany(
        "INSERT INTO articles VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(pmid) DO UPDATE SET "
        "version=excluded.version, year=excluded.year, journal=excluded.journal, "
        "journal_iso=excluded.journal_iso, language=excluded.language, retracted=excluded.retracted, "
        "doi=excluded.doi, pmc=excluded.pmc, record=excluded.record",
        [(a.pmid, a.version, a.year, a.journal or None, a.journal_iso, a.languages[0] if a.languages else None,
          int(a.retracted), a.doi, a.pmc, blob) for a, blob in upserts],
    )
    mesh_rows: dict[tuple[int, str], bool] = {}  # (pmid, descriptor) -> major through any heading
    for a, _ in upserts:
        for m in a.mesh:
            mesh_rows[a.pmid, m.descriptor] = mesh_rows.get((a.pmid, m.descriptor), False) or m.any_major
    db.executemany("INSERT OR IGNORE INTO article_mesh VALUES (?,?,?)",
                   [(p, d, int(mj)) for (p, d), mj in mesh_rows.items()])
    db.executemany("INSERT OR IGNORE INTO article_pubtypes VALUES (?,?)",
                   [(a.pmid, t) for a, _ in upserts for t in a.publication_types])
    db.executemany("INSERT OR IGNORE INTO article_languages VALUES (?,?)",
                   [(a.pmid, lang) for a, _ in upserts for lang in a.languages])


def _write_chunks(db: sqlite3.Connection, old: dict[int, str], new: dict[int, str], res: ApplyResult) -> list[int]:
    """Replace the chunks ``old`` (chunk_id -> text) of the touched PMIDs by ``new``: unchanged texts keep
    their state (no re-embedding), changed and added ones become pending, removed ids are queued for the
    vector index. Returns the ids written (removed, changed, added)."""
    removed = [cid for cid in old if cid not in new]
    changed = [cid for cid, t in new.items() if cid in old and old[cid] != t]
    added = [cid for cid in new if cid not in old]
    # FTS5 external content: an entry is removed with the text it was indexed with (the old text)
    db.executemany("INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', ?, ?)",
                   [(cid, old[cid]) for cid in (*removed, *changed)])
    if removed:
        ids = _json_ids(removed)
        db.execute("DELETE FROM chunks WHERE chunk_id IN (SELECT value FROM json_each(?))", (ids,))
        db.execute("INSERT OR IGNORE INTO removed_chunks SELECT value FROM json_each(?)", (ids,))
    db.executemany("UPDATE chunks SET text = ?, state = 0 WHERE chunk_id = ?", [(new[cid], cid) for cid in changed])
    db.executemany("INSERT INTO chunks (chunk_id, pmid, seq, text, state) VALUES (?,?,?,?,0)",
                   [(cid, cid // 1000, cid % 1000, new[cid]) for cid in added])
    db.executemany("INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)", [(cid, new[cid]) for cid in (*changed, *added)])
    res.chunks_added += len(changed) + len(added)
    res.chunks_removed += len(removed)
    return [*removed, *changed, *added]
