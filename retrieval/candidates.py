"""Candidate retrieval for hybrid search: the dense (FAISS) and lexical (FTS5 BM25) retrievers, each
reduced to its best chunk per key (PMID, or chunk id when ``one_per_pmid`` is off), and the exact dense
score of candidates only one retriever found.

``Candidates``: key -> (score, chunk id), best first (dict order is rank order)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from retrieval.chunking import pmid_of
from retrieval.filters import Filters
from retrieval.fts import TermStats

if TYPE_CHECKING:
    from retrieval.index import VectorIndex
    from retrieval.store import CorpusStore

Candidates = dict[int, tuple[float, int]]
Ranked = tuple[np.ndarray, np.ndarray]  # (n,) int64 chunk ids, (n,) scores, best first


def best_per_key(ids: np.ndarray, scores: np.ndarray, per_pmid: bool) -> Candidates:
    """key -> (best score, its chunk id); input sorted best first."""
    out: Candidates = {}
    for cid, s in zip(ids.tolist(), scores.tolist(), strict=True):
        key = pmid_of(cid) if per_pmid else cid
        if key not in out:
            out[key] = (s, cid)
    return out


def deepen(fetch: Callable[[int], Ranked], k: int, start: int, per_pmid: bool) -> Candidates:
    """Best chunk per key from ``fetch(n)`` (n >= ``start``), fetching 4x deeper until k keys or the
    retriever runs dry (several chunks of one PMID can fill a shallow list)."""
    n = max(start, k)
    while True:
        ids, scores = fetch(n)
        best = best_per_key(ids, scores, per_pmid)
        if len(best) >= k or len(ids) < n:
            return best
        n *= 4


def dense(index: VectorIndex, qv: np.ndarray, n: int, allowed: np.ndarray | None) -> Ranked:
    """Top-n chunks by cosine to the (1, dim) query vector, among ``allowed`` chunk ids if given."""
    scores, ids = index.search(qv, n, allowed)
    ok = ids[0] >= 0
    return ids[0][ok], scores[0][ok]


def lexical(store: CorpusStore, terms: TermStats, query: str, n: int, filters: Filters, *,
            keep_common: bool = True) -> Ranked:
    """Top-n chunks by BM25 (common words pruned to bound the cost, see ``TermStats.prune``)."""
    rows = store.fts_search(terms.prune(query, keep_common=keep_common), n, None if filters.empty else filters)
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float64)


def dense_fill(index: VectorIndex, store: CorpusStore, qv: np.ndarray, keys: list[int], found: Candidates,
               per_pmid: bool, allowed: np.ndarray | None) -> Candidates:
    """``found`` plus the exact dense (score, chunk) of every other key, from the vectors stored in the
    index (chunks not embedded yet are skipped)."""
    missing = [key for key in keys if key not in found]
    if not missing:
        return found
    chunks = [c for cs in store.chunk_ids_of(missing).values() for c in cs] if per_pmid else missing
    cids = np.array(chunks, np.int64)
    if allowed is not None:
        cids = cids[np.isin(cids, allowed)]
    cids = cids[index.contains(cids)] if len(cids) else cids
    out = dict(found)
    if len(cids):
        sims = index.vectors(cids) @ qv[0]  # (m,)
        order = np.argsort(-sims, kind="stable")
        for key, v in best_per_key(cids[order], sims[order], per_pmid).items():
            out.setdefault(key, v)
    return out
