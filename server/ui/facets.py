"""Filter suggestions from the corpus store (journals, MeSH descriptors, publication types, languages), read
through a read-only SQLite connection and cached until the served index version changes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec

LIMIT = 500  # most frequent values per facet


class Facets(msgspec.Struct, kw_only=True):
    journals: list[str]
    mesh: list[str]
    publication_types: list[str]
    languages: list[str]
    year_min: int | None
    year_max: int | None


_EMPTY = Facets(journals=[], mesh=[], publication_types=[], languages=[], year_min=None, year_max=None)


class FacetCache:
    def __init__(self, corpus_db: Path) -> None:
        self.path = Path(corpus_db)
        self._lock = threading.Lock()
        self._key: str | None = None
        self._value = _EMPTY

    def _read(self) -> Facets:
        if not self.path.exists():
            return _EMPTY
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            def top(sql: str) -> list[str]:
                return [r[0] for r in db.execute(sql + f" LIMIT {LIMIT}") if r[0]]

            lo, hi = db.execute("SELECT MIN(year), MAX(year) FROM articles").fetchone()
            return Facets(
                journals=top("SELECT journal FROM articles GROUP BY journal ORDER BY COUNT(*) DESC, journal"),
                mesh=top("SELECT descriptor FROM article_mesh GROUP BY descriptor ORDER BY COUNT(*) DESC, descriptor"),
                publication_types=top("SELECT ptype FROM article_pubtypes GROUP BY ptype ORDER BY COUNT(*) DESC"),
                languages=top("SELECT language FROM article_languages GROUP BY language ORDER BY COUNT(*) DESC"),
                year_min=lo, year_max=hi)
        finally:
            db.close()

    def get(self, index_version: str | None) -> Facets:
        """Suggestions for the corpus behind ``index_version`` (re-read when it changes)."""
        key = index_version or ""
        with self._lock:
            if self._key != key:
                self._value, self._key = self._read(), key
            return self._value
