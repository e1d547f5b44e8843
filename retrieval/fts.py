"""Lexical search over the store's FTS5 table ``chunks_fts`` (BM25): safe MATCH expressions from user text,
the BM25 query, and term statistics to keep a query's cost bounded."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, ClassVar

# BM25 cost is the number of postings FTS5 scores: an OR query with a word found in most chunks scores
# most of the corpus (~300 ms at 100k chunks, minutes at PubMed scale). Query words are kept rarest first
# while their summed document frequency stays under this; dropped words are the most common ones, whose
# IDF (hence BM25 contribution) is smallest. Small corpora (all postings under the budget) are unaffected.
LEX_POSTINGS_BUDGET = 10_000
_TERM = re.compile(r'"((?:[^"]|"")*)"')
_FTS_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    str.split(
    "a an and are as at be been but by can could did do does for from had has have how in into is it its "
    "may might of on or over than that the their there these this those to under was were what when where "
    "which while who whom why will with within would")
)


def fts_query(text: str, max_terms: int = 32) -> str | None:
    """User text -> a safe FTS5 MATCH expression: every word becomes a quoted term, OR-ed (BM25 ranks
    documents matching more terms higher). Operators, quotes and brackets in the input are plain text.
    None if nothing searchable remains."""
    seen: dict[str, None] = {}
    for w in _FTS_WORD.findall(text.lower()):
        w = w.replace("_", " ").strip()
        if w and w not in _STOPWORDS:
            seen.setdefault(w, None)
    terms = list(seen)[:max_terms]
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def search_sql(match: str, limit: int, filters: tuple[str, list[Any]] | None) -> tuple[str, list[Any]]:
    """``(sql, params)``: BM25 top-``limit`` rows (chunk_id, -bm25) for a MATCH expression, best first;
    ``filters``: a ``filter_sql`` pair restricting the articles (applied before the limit)."""
    if filters is None:
        return ("SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY bm25(chunks_fts) LIMIT ?", [match, limit])
    return (f"SELECT f.rowid, -bm25(chunks_fts) FROM chunks_fts f JOIN chunks c ON c.chunk_id = f.rowid "
            f"WHERE chunks_fts MATCH ? AND c.pmid IN ({filters[0]}) ORDER BY bm25(chunks_fts) LIMIT ?",
            [match, *filters[1], limit])


class TermStats:
    """Document frequencies of query words in the store's FTS5 index, counted up to a cap through a private
    read-only connection (nothing is written to the store). A word is counted as BM25 matches it (a quoted
    MATCH term: the porter stem), and only up to ``cap`` chunks: FTS5 knows a term's frequency only by
    reading its whole posting list (a common word's is millions of entries at PubMed scale), while pruning
    only needs to know whether a word fits the budget. Cached; counts may lag the corpus."""

    CACHE_MAX = 200_000

    def __init__(self, db_path: str | Path) -> None:
        self._db = sqlite3.connect(f"file:{Path(db_path).absolute()}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], int] = {}

    _shared: ClassVar[dict[str, TermStats]] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def for_store(cls, db_path: str | Path) -> TermStats:
        """One instance per store file and process (Searchers are re-created on every index reload)."""
        key = str(Path(db_path).absolute())
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(key)
            return cls._shared[key]

    def df(self, word: str, cap: int = LEX_POSTINGS_BUDGET + 1) -> int:
        """Chunks matching ``word`` as a BM25 query term, counted up to ``cap`` (reads at most ``cap``
        postings); 0 when none."""
        key = (word, cap)
        if key in self._cache:
            return self._cache[key]
        term = '"' + word.replace('"', '""') + '"'
        with self._lock:
            try:
                n = int(self._db.execute("SELECT count(*) FROM (SELECT 1 FROM chunks_fts WHERE chunks_fts MATCH ? "
                                         "LIMIT ?)", (term, cap)).fetchone()[0])
            except sqlite3.OperationalError:  # a word the FTS5 query syntax refuses even quoted: unsearchable
                n = 0
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            self._cache[key] = n
        return n

    def prune(self, query: str, budget: int = LEX_POSTINGS_BUDGET, *, keep_common: bool = True) -> str:
        """The query's BM25 terms, rarest first, while their summed document frequency fits ``budget``
        (the rarest term is always kept; the query unchanged if all fit). Each count reads at most
        ``budget + 1`` postings. When every word is in more than ``budget`` chunks, BM25 would score a whole
        posting list (seconds at PubMed scale) for words of little weight: ``keep_common`` keeps the first
        of them (a lexical-only search), otherwise "" is returned (hybrid search: dense only)."""
        expr = fts_query(query)
        if expr is None:
            return query
        terms = [t.replace('""', '"') for t in _TERM.findall(expr)]
        dfs = [self.df(t, budget + 1) for t in terms]
        if sum(dfs) <= budget:
            return query
        if min(dfs) > budget and not keep_common:
            return ""
        kept: list[str] = []
        total = 0
        for df, _, t in sorted(zip(dfs, range(len(terms)), terms, strict=True)):
            if kept and total + df > budget:
                break
            kept.append(t)
            total += df
        return " ".join(kept)

    def close(self) -> None:
        self._db.close()
