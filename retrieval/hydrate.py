"""Hydration: ranked keys -> ``Hit`` records with the article's metadata and the chunk's text."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from pubmind.records import Article
from retrieval.chunking import pmid_of

if TYPE_CHECKING:
    from retrieval.store import CorpusStore


class Hit(msgspec.Struct, kw_only=True):
    pmid: int
    chunk_id: int
    title: str
    journal: str
    year: int | None
    snippet: str  # the matching chunk's text (title prefix removed, whitespace collapsed)
    score: float  # final score (fused, or rerank when reranked); higher is better
    dense: float | None = None  # cosine of the best chunk
    dense_rank: int | None = None  # 1-based rank in the dense list (None: not in its top candidates)
    lexical: float | None = None  # BM25 (higher is better)
    lexical_rank: int | None = None
    fused: float | None = None  # fusion score before reranking (hybrid only)
    rerank: float | None = None  # cross-encoder score

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


class Docs(msgspec.Struct):
    """Chunk texts and articles read for a set of chunk ids (either may lack ids deleted meanwhile)."""

    texts: dict[int, str]
    articles: dict[int, Article]


def fetch(store: CorpusStore, chunk_ids: Iterable[int]) -> Docs:
    cids = list(chunk_ids)
    return Docs(store.chunk_text(cids), store.get_many({pmid_of(c) for c in cids}))


def make_hit(docs: Docs, cid: int, **scores: Any) -> Hit | None:
    """The Hit of chunk ``cid`` with these score fields; None if it was deleted since retrieval."""
    art = docs.articles.get(pmid_of(cid))
    if art is None or cid not in docs.texts:
        return None
    return Hit(pmid=art.pmid, chunk_id=cid, title=art.title, journal=art.journal or (art.journal_iso or ""),
               year=art.year, snippet=snippet(docs.texts[cid], art.title), **scores)


def snippet(text: str, title: str) -> str:
    """Chunk text without its title line, whitespace collapsed."""
    t = " ".join(title.split())
    if t and text.startswith(t + "\n"):
        text = text[len(t) + 1:]
    return " ".join(text.split())
