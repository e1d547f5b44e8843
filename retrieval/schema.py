"""Corpus store schema: the migrations that build one SQLite file (see ``retrieval.store`` for the tables).

FTS5 (``chunks_fts``) is external-content over ``chunks.text``. Version 1 kept it in sync with row triggers;
version 2 drops them: the store writes the FTS rows itself, a whole batch per statement, in the same
transaction as the chunks (``retrieval.store._write_chunks``). Measured on 72.7k real chunks: 6.3 CPU-s
through triggers, 2.0 through batched statements. Version 3 raises FTS5's in-memory term buffer
(``hashsize``, default 1 MiB) to 64 MiB, so a bulk transaction of a few thousand articles is flushed
as one level-0 segment instead of several (less merging: 1.1-1.3x faster bulk writes, measured by
bench/scale.py); the buffer lives only inside a write transaction. Version 4 lets FTS5 merge its
segments 16 at a time (``automerge``, default 4): each posting is rewritten about half as often during a
bulk ingest (log16 instead of log4 levels of the ~250 level-0 segments of 1M records). Measured on 100k
generated records (482k chunks) applied alone: 0.219 -> 0.175 CPU-ms per record for the whole store
write (FTS5's share 0.14 -> 0.095), the gap widening with size (second half of the records: 0.230 ->
0.179); 200 PubMedQA BM25 queries on the result took the same time (p50 158 / 160 ms, p95 375 / 378).
"""

from __future__ import annotations

SCHEMA_VERSION = 4

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE articles (
    pmid INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    year INTEGER,
    journal TEXT COLLATE NOCASE,
    journal_iso TEXT COLLATE NOCASE,
    language TEXT COLLATE NOCASE,
    retracted INTEGER NOT NULL,
    doi TEXT,
    pmc TEXT,
    record BLOB NOT NULL
);
CREATE INDEX articles_year ON articles(year);
CREATE INDEX articles_journal ON articles(journal);
CREATE INDEX articles_journal_iso ON articles(journal_iso);
CREATE INDEX articles_retracted ON articles(retracted);
CREATE INDEX articles_doi ON articles(doi);
CREATE TABLE article_mesh (
    pmid INTEGER NOT NULL, descriptor TEXT NOT NULL COLLATE NOCASE, major INTEGER NOT NULL,
    PRIMARY KEY (pmid, descriptor)
) WITHOUT ROWID;
CREATE INDEX article_mesh_descriptor ON article_mesh(descriptor, major, pmid);
CREATE TABLE article_pubtypes (
    pmid INTEGER NOT NULL, ptype TEXT NOT NULL COLLATE NOCASE, PRIMARY KEY (pmid, ptype)
) WITHOUT ROWID;
CREATE INDEX article_pubtypes_ptype ON article_pubtypes(ptype, pmid);
CREATE TABLE article_languages (
    pmid INTEGER NOT NULL, language TEXT NOT NULL COLLATE NOCASE, PRIMARY KEY (pmid, language)
) WITHOUT ROWID;
CREATE INDEX article_languages_language ON article_languages(language, pmid);
CREATE TABLE chunks (
    chunk_id INTEGER PRIMARY KEY,
    pmid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX chunks_pmid ON chunks(pmid);
CREATE INDEX chunks_pending ON chunks(chunk_id) WHERE state = 0;
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, content='chunks', content_rowid='chunk_id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.chunk_id, new.text);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.chunk_id, old.text);
END;
CREATE TRIGGER chunks_au AFTER UPDATE OF text ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.chunk_id, old.text);
    INSERT INTO chunks_fts(rowid, text) VALUES (new.chunk_id, new.text);
END;
CREATE TABLE removed_chunks (chunk_id INTEGER PRIMARY KEY);
CREATE TABLE files (path TEXT PRIMARY KEY, md5 TEXT NOT NULL, counts TEXT NOT NULL, done_at REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
    2: """
DROP TRIGGER IF EXISTS chunks_ai;
DROP TRIGGER IF EXISTS chunks_ad;
DROP TRIGGER IF EXISTS chunks_au;
""",
    3: """
INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('hashsize', 67108864);
""",
    4: """
INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('automerge', 16);
""",
}


def split_sql(script: str) -> list[str]:
    """Split a migration script into statements (triggers contain ';' inside BEGIN ... END)."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        stmt = "\n".join(buf).strip()
        if stmt.endswith(";") and (not stmt.upper().startswith("CREATE TRIGGER") or stmt.upper().endswith("END;")):
            out.append(stmt)
            buf = []
    assert not "".join(buf).strip(), f"unterminated SQL in migration: {buf}"
    return out
