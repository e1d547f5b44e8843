"""Hybrid search: dense (FAISS) + lexical (FTS5 BM25), fused, filters applied before top-k, at most one
hit per PMID (its best chunk), optional cross-encoder reranking.

One query runs four stages, each in its own module:
  candidates  ``retrieval.candidates``  dense and BM25 top lists, best chunk per PMID, exact dense fill
  fusion      ``retrieval.fusion``      convex (z-scored) or reciprocal-rank fusion
  rerank      ``retrieval.rerank``      optional cross-encoder over the fused top ``rerank_top``
  hydration   ``retrieval.hydrate``     chunk texts + article metadata -> ``Hit``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pubmind.errors import InvalidInput, ServiceUnavailable
from pubmind.settings import Settings
from retrieval import candidates, fusion, hydrate
from retrieval.candidates import Candidates
from retrieval.filters import FILTER_FIELDS, Filters, parse_filters
from retrieval.fts import LEX_POSTINGS_BUDGET, TermStats
from retrieval.hydrate import Hit
from retrieval.rerank import Reranker, load_reranker, rerank

if TYPE_CHECKING:
    from retrieval.index import VectorIndex
    from retrieval.store import CorpusStore

__all__ = ["FILTER_FIELDS", "LEX_POSTINGS_BUDGET", "MODES", "Hit", "Reranker", "Searcher", "TermStats",
           "load_reranker", "parse_filters"]

MODES = ("dense", "lexical", "hybrid")
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bm25")


class EmbedderLike(Protocol):
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...


class Searcher:
    def __init__(self, settings: Settings, store: CorpusStore, index: VectorIndex, embedder: EmbedderLike,
                 reranker: Reranker | None = None) -> None:
        self.settings, self.store, self.index, self.embedder = settings, store, index, embedder
        self.reranker = reranker
        self.terms = TermStats.for_store(store.path)
        self._owns_store = False

    @classmethod
    def open(cls, settings: Settings) -> Searcher:
        """Read-only searcher over ``settings.home`` (store, index, embedder, reranker per settings)."""
        from retrieval.embed import Embedder
        from retrieval.index import VectorIndex
        from retrieval.store import CorpusStore

        emb = Embedder(settings.embedding)
        if not settings.corpus_db.exists():
            raise ServiceUnavailable(f"no corpus store at {settings.corpus_db}; ingest first")
        index = VectorIndex.open(settings.index_dir, settings, emb.fingerprint, readonly=True)
        searcher = cls(settings, CorpusStore(settings.corpus_db), index, emb, load_reranker(settings))
        searcher._owns_store = True
        return searcher

    def close(self) -> None:
        """Close the store if ``open()`` made it (otherwise store, index and embedder belong to the caller)."""
        if self._owns_store:
            self.store.close()

    def _check(self, query: str, k: int, mode: str) -> str:
        r = self.settings.retrieval
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput(f"query must be non-empty text, got {query!r:.50}", param="query")
        if len(query) > r.max_query_chars:
            raise InvalidInput(f"query has {len(query)} characters, more than retrieval.max_query_chars="
                               f"{r.max_query_chars}", param="query")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= r.k_max:
            raise InvalidInput(f"k must be an integer in [1, {r.k_max}], got {k!r}", param="k")
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}", param="mode")
        return " ".join(query.split())

    def search(self, query: str, k: int | None = None, mode: str | None = None,
               filters: Filters | Mapping[str, Any] | None = None, *,
               query_vector: np.ndarray | None = None) -> list[Hit]:
        """Top-k hits (at most one per PMID unless ``retrieval.one_per_pmid`` is off), best first.
        ``query_vector``: the query's (dim,) embedding when the caller batch-encoded queries."""
        r = self.settings.retrieval
        k = r.k if k is None else k
        mode = mode or r.mode
        query = self._check(query, k, mode)
        f = parse_filters(filters)
        allowed = None  # (n,) chunk ids passing the filters; dense search is restricted to them
        if not f.empty:
            allowed = self.store.allowed_chunk_ids(f)
            if len(allowed) == 0:
                return []
        depth = max(k, r.rerank_top if self.reranker is not None else 0)
        qv, dense, lex = self._candidates(query, mode, f, allowed, depth, query_vector)
        keys = list(dict.fromkeys([*dense, *lex]))
        if not keys:
            return []
        d_rank, l_rank = fusion.ranks(dense), fusion.ranks(lex)
        if mode == "hybrid":
            assert qv is not None
            dense = candidates.dense_fill(self.index, self.store, qv, keys, dense, r.one_per_pmid, allowed)
            fused = fusion.fuse(r, keys, dense, lex, d_rank, l_rank)
        else:
            fused = {key: (dense if mode == "dense" else lex)[key][0] for key in keys}
        order = sorted(keys, key=lambda key: -fused[key])[:depth]
        chunk_of = {key: (lex[key] if mode == "lexical" else dense.get(key) or lex[key])[1] for key in order}
        docs = hydrate.fetch(self.store, chunk_of.values())
        rr: dict[int, float] = {}
        if self.reranker is not None:
            text_of = {key: docs.texts.get(cid, "") for key, cid in chunk_of.items()}
            order, rr = rerank(self.reranker, query, order, text_of, r.rerank_top)
        hits = (hydrate.make_hit(
            docs, chunk_of[key], score=rr.get(key, fused[key]),
            dense=dense[key][0] if key in dense else None, dense_rank=d_rank.get(key),
            lexical=lex[key][0] if key in lex else None, lexical_rank=l_rank.get(key),
            fused=fused[key] if mode == "hybrid" else None, rerank=rr.get(key),
        ) for key in order[:k])
        return [h for h in hits if h is not None]  # None: deleted between retrieval and now

    def _candidates(self, query: str, mode: str, f: Filters, allowed: np.ndarray | None, depth: int,
                    query_vector: np.ndarray | None) -> tuple[np.ndarray | None, Candidates, Candidates]:
        """(query vector or None, dense candidates, lexical candidates) for ``mode``. Hybrid runs BM25
        (SQLite) beside the query embedding + FAISS (both drop the GIL)."""
        r = self.settings.retrieval
        start, per_pmid = r.candidates, r.one_per_pmid

        def lexical() -> Candidates:  # hybrid: no BM25 when every word is common (see TermStats.prune)
            return candidates.deepen(
                lambda n: candidates.lexical(self.store, self.terms, query, n, f, keep_common=mode == "lexical"),
                depth, start, per_pmid)

        if mode == "lexical":
            return None, {}, lexical()
        lex_job = _POOL.submit(lexical) if mode == "hybrid" else None
        qv = (self.embedder.encode_queries([query]) if query_vector is None
              else np.asarray(query_vector, np.float32).reshape(1, -1))  # (1, dim)
        dense = candidates.deepen(lambda n: candidates.dense(self.index, qv, n, allowed), depth, start, per_pmid)
        return qv, dense, lex_job.result() if lex_job is not None else {}
