"""Hybrid search: dense (FAISS) + lexical (FTS5 BM25), fused, filters applied before top-k, at most one
hit per PMID (its best chunk), optional cross-encoder reranking.

Fusion (``retrieval.fusion``):
  convex  score = w_d * z(dense) + w_l * z(log(1 + bm25)); z = z-score over the fused candidate set (the
          log tames BM25's heavy tail, which otherwise lets one rare shared word outvote the dense score). Every
          candidate gets its exact dense score (its chunk vectors are read back from the index), so a
          lexical-only candidate is not penalised for missing the dense cut; a dense-only candidate gets
          the lowest BM25 seen (it scored at most that).
  rrf     score = sum over retrievers of w / (rrf_k + rank).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec
import numpy as np

from pubmind.errors import InvalidInput
from pubmind.settings import Settings
from retrieval.chunking import pmid_of
from retrieval.store import Filters, fts_query

if TYPE_CHECKING:
    from retrieval.index import VectorIndex
    from retrieval.store import CorpusStore

MODES = ("dense", "lexical", "hybrid")
# BM25 cost is the number of postings FTS5 scores: an OR query with a word found in most chunks scores
# most of the corpus (~300 ms at 100k chunks, minutes at PubMed scale). Query words are kept rarest first
# while their summed document frequency stays under this; dropped words are the most common ones, whose
# IDF (hence BM25 contribution) is smallest. Small corpora (all postings under the budget) are unaffected.
LEX_POSTINGS_BUDGET = 10_000
_TERM = re.compile(r'"((?:[^"]|"")*)"')
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bm25")
FILTER_FIELDS = tuple(Filters.__struct_fields__)


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


class Reranker(Protocol):
    """sentence-transformers CrossEncoder or anything with the same ``predict``."""

    def predict(self, sentences: list[tuple[str, str]], **kwargs: Any) -> Any: ...


class EmbedderLike(Protocol):
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...


def load_reranker(settings: Settings) -> Reranker | None:
    """The CrossEncoder named by ``retrieval.rerank_model`` ('' : none)."""
    name = settings.retrieval.rerank_model
    if not name:
        return None
    from sentence_transformers import CrossEncoder

    from pubmind.errors import ConfigError

    try:
        return CrossEncoder(name, device=settings.embedding.device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"retrieval.rerank_model={name!r}: cannot load: {e}", param="retrieval.rerank_model") from e


def parse_filters(filters: Filters | Mapping[str, Any] | None) -> Filters:
    """A Filters struct from a struct, a dict (unknown fields rejected) or None; inverted years rejected."""
    if filters is None:
        return Filters()
    if not isinstance(filters, Filters):
        if not isinstance(filters, Mapping):
            raise InvalidInput(f"filters must be an object, got {type(filters).__name__}", param="filters")
        unknown = sorted(set(filters) - set(FILTER_FIELDS))
        if unknown:
            raise InvalidInput(f"unknown filter field {unknown[0]!r}; known: {', '.join(FILTER_FIELDS)}",
                               param=f"filters.{unknown[0]}")
        vals = {k: (v,) if isinstance(v, str) and k in ("journals", "mesh", "publication_types", "languages")
                else v for k, v in filters.items() if v is not None}
        try:
            filters = msgspec.convert(vals, Filters)
        except msgspec.ValidationError as e:
            raise InvalidInput(f"bad filters: {e}", param="filters") from None
    f = filters
    if f.year_from is not None and f.year_to is not None and f.year_from > f.year_to:
        raise InvalidInput(f"filters.year_from={f.year_from} is after filters.year_to={f.year_to}",
                           param="filters.year_from")
    return f


class TermStats:
    """Document frequencies of the store's FTS5 terms (an ``fts5vocab`` table in the temp schema of a
    private read-only connection: nothing is written to the store). Cached; counts may lag the corpus."""

    CACHE_MAX = 200_000

    def __init__(self, db_path: str | Path) -> None:
        self._db = sqlite3.connect(f"file:{Path(db_path).absolute()}?mode=ro", uri=True, check_same_thread=False)
        self._db.execute("CREATE VIRTUAL TABLE temp.fts_vocab USING fts5vocab(main, 'chunks_fts', 'row')")
        self._lock = threading.Lock()
        self._cache: dict[str, int | None] = {}

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

    def df(self, word: str) -> int | None:
        """Chunks containing ``word``'s stem (porter stems are prefixes of the word, or end in i for y);
        None when no stem is found."""
        if word in self._cache:
            return self._cache[word]
        cands = ([word[:-1] + "i"] if word.endswith("y") else []) + [word[:n] for n in range(len(word), 2, -1)]
        out = None
        with self._lock:
            for c in cands:
                row = self._db.execute("SELECT doc FROM temp.fts_vocab WHERE term = ?", (c,)).fetchone()
                if row:
                    out = int(row[0])
                    break
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            self._cache[word] = out
        return out

    def prune(self, query: str, budget: int = LEX_POSTINGS_BUDGET) -> str:
        """The query's BM25 terms, rarest first, while their summed document frequency fits ``budget``
        (the rarest term is always kept); the query unchanged if all fit."""
        expr = fts_query(query)
        if expr is None:
            return query
        terms = [t.replace('""', '"') for t in _TERM.findall(expr)]
        dfs = [self.df(t) or 0 for t in terms]
        if sum(dfs) <= budget:
            return query
        kept, total = [], 0
        for df, t in sorted(zip(dfs, terms, strict=True)):
            if kept and total + df > budget:
                break
            kept.append(t)
            total += df
        return " ".join(kept)

    def close(self) -> None:
        self._db.close()


def _z(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 1e-9 else np.zeros_like(x)


def _best_per_key(ids: np.ndarray, scores: np.ndarray, per_pmid: bool) -> dict[int, tuple[float, int]]:
    """key (pmid or chunk id) -> (best score, its chunk id); input sorted best first."""
    out: dict[int, tuple[float, int]] = {}
    for cid, s in zip(ids.tolist(), scores.tolist(), strict=True):
        key = pmid_of(cid) if per_pmid else cid
        if key not in out:
            out[key] = (s, cid)
    return out


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
            from pubmind.errors import ServiceUnavailable

            raise ServiceUnavailable(f"no corpus store at {settings.corpus_db}; ingest first")
        index = VectorIndex.open(settings.index_dir, settings, emb.fingerprint, readonly=True)
        searcher = cls(settings, CorpusStore(settings.corpus_db), index, emb, load_reranker(settings))
        searcher._owns_store = True
        return searcher

    def close(self) -> None:
        """Close the store if ``open()`` made it (otherwise store, index and embedder belong to the caller)."""
        if self._owns_store:
            self.store.close()

    # ---- validation -----------------------------------------------------------------------------
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

    # ---- retrievers -----------------------------------------------------------------------------
    def _dense(self, qv: np.ndarray, n: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-n chunks (ids, cosines), best first."""
        scores, ids = self.index.search(qv, n, allowed)
        ok = ids[0] >= 0
        return ids[0][ok], scores[0][ok]

    def _lexical(self, query: str, n: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        rows = self.store.fts_search(self.terms.prune(query), n, None if filters.empty else filters)
        return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float64)

    def _retrieve(self, fetch: Any, k: int, per_pmid: bool) -> dict[int, tuple[float, int]]:
        """Best chunk per key from ``fetch(n)``, deepening until k keys or the retriever runs dry."""
        n = max(self.settings.retrieval.candidates, k)
        while True:
            ids, scores = fetch(n)
            best = _best_per_key(ids, scores, per_pmid)
            if len(best) >= k or len(ids) < n:
                return best
            n *= 4

    # ---- search ---------------------------------------------------------------------------------
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
        per_pmid = r.one_per_pmid
        allowed = None
        if not f.empty:
            allowed = self.store.allowed_chunk_ids(f)
            if len(allowed) == 0:
                return []
        depth = max(k, r.rerank_top if self.reranker is not None else 0)
        dense: dict[int, tuple[float, int]] = {}
        lex: dict[int, tuple[float, int]] = {}
        qv = None
        lex_job = None
        if mode == "hybrid":  # BM25 (SQLite) runs beside the query embedding + FAISS (both drop the GIL)
            lex_job = _POOL.submit(self._retrieve, lambda n: self._lexical(query, n, f), depth, per_pmid)
        elif mode == "lexical":
            lex = self._retrieve(lambda n: self._lexical(query, n, f), depth, per_pmid)
        if mode in ("dense", "hybrid"):
            qv = (self.embedder.encode_queries([query]) if query_vector is None
                  else np.asarray(query_vector, np.float32).reshape(1, -1))  # (1, dim)
            dense = self._retrieve(lambda n: self._dense(qv, n, allowed), depth, per_pmid)
        if lex_job is not None:
            lex = lex_job.result()
        keys = list(dict.fromkeys([*dense, *lex]))
        if not keys:
            return []
        d_rank = {key: i for i, key in enumerate(dense, 1)}
        l_rank = {key: i for i, key in enumerate(lex, 1)}
        if mode == "hybrid":
            assert qv is not None
            dense_all = self._dense_fill(qv, keys, dense, per_pmid, allowed)
            fused = self._fuse(keys, dense_all, lex, d_rank, l_rank)
        else:
            src = dense if mode == "dense" else lex
            dense_all = dense
            fused = {key: src[key][0] for key in keys}
        order = sorted(keys, key=lambda key: -fused[key])[:depth]
        chunk_of = {key: (dense_all.get(key) or lex[key])[1] for key in order}
        if mode == "lexical":
            chunk_of = {key: lex[key][1] for key in order}
        texts = self.store.chunk_text(chunk_of.values())
        arts = self.store.get_many({pmid_of(c) for c in chunk_of.values()})
        rerank: dict[int, float] = {}
        if self.reranker is not None:
            cand = order[: r.rerank_top]
            pairs = [(query, texts.get(chunk_of[key], "")) for key in cand]
            rerank = dict(zip(cand, np.asarray(self.reranker.predict(pairs, show_progress_bar=False),
                                               dtype=np.float64).ravel().tolist(), strict=True))
            order = sorted(cand, key=lambda key: -rerank[key]) + order[len(cand):]
        hits = []
        for key in order[:k]:
            cid = chunk_of[key]
            art = arts.get(pmid_of(cid))
            if art is None or cid not in texts:  # deleted between retrieval and now
                continue
            hits.append(Hit(
                pmid=art.pmid, chunk_id=cid, title=art.title, journal=art.journal or (art.journal_iso or ""),
                year=art.year, snippet=_snippet(texts[cid], art.title),
                score=rerank.get(key, fused[key]),
                dense=dense_all[key][0] if key in dense_all else None, dense_rank=d_rank.get(key),
                lexical=lex[key][0] if key in lex else None, lexical_rank=l_rank.get(key),
                fused=fused[key] if mode == "hybrid" else None, rerank=rerank.get(key),
            ))
        return hits

    def _dense_fill(self, qv: np.ndarray, keys: list[int], dense: dict[int, tuple[float, int]],
                    per_pmid: bool, allowed: np.ndarray | None) -> dict[int, tuple[float, int]]:
        """Exact dense (score, chunk) for every candidate key, from vectors stored in the index."""
        missing = [key for key in keys if key not in dense]
        if not missing:
            return dense
        chunks = [c for cs in self.store.chunk_ids_of(missing).values() for c in cs] if per_pmid else missing
        cids = np.array(chunks, np.int64)
        if allowed is not None:
            cids = cids[np.isin(cids, allowed)]
        cids = cids[self.index.contains(cids)] if len(cids) else cids  # not yet embedded: skip
        out = dict(dense)
        if len(cids):
            sims = self.index.vectors(cids) @ qv[0]  # (m,)
            order = np.argsort(-sims, kind="stable")
            for key, v in _best_per_key(cids[order], sims[order], per_pmid).items():
                out.setdefault(key, v)
        return out

    def _fuse(self, keys: list[int], dense: dict[int, tuple[float, int]], lex: dict[int, tuple[float, int]],
              d_rank: dict[int, int], l_rank: dict[int, int]) -> dict[int, float]:
        r = self.settings.retrieval
        if r.fusion == "rrf":
            return {key: (r.dense_weight / (r.rrf_k + d_rank[key]) if key in d_rank else 0.0)
                    + (r.lexical_weight / (r.rrf_k + l_rank[key]) if key in l_rank else 0.0) for key in keys}
        d_floor = min((v[0] for v in dense.values()), default=0.0)
        l_floor = min((v[0] for v in lex.values()), default=0.0)
        d = _z(np.array([dense[key][0] if key in dense else d_floor for key in keys]))
        lx = _z(np.log1p(np.maximum([lex[key][0] if key in lex else l_floor for key in keys], 0.0)))
        s = r.dense_weight * d + r.lexical_weight * lx
        return dict(zip(keys, s.tolist(), strict=True))


def _snippet(text: str, title: str) -> str:
    t = " ".join(title.split())
    if t and text.startswith(t + "\n"):
        text = text[len(t) + 1:]
    return " ".join(text.split())
