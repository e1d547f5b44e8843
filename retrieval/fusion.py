"""Score fusion of the dense and lexical candidate lists (``retrieval.fusion``):

  convex  score = w_d * z(dense) + w_l * z(log(1 + bm25)); z = z-score over the fused candidate set (the
          log tames BM25's heavy tail, which otherwise lets one rare shared word outvote the dense score). Every
          candidate has its exact dense score (``candidates.dense_fill``), so a lexical-only candidate is not
          penalised for missing the dense cut; a dense-only candidate gets the lowest BM25 seen (it scored
          at most that).
  rrf     score = sum over retrievers of w / (rrf_k + rank).
"""

from __future__ import annotations

import numpy as np

from pubmind.settings import RetrievalSettings
from retrieval.candidates import Candidates


def ranks(cands: Candidates) -> dict[int, int]:
    """key -> 1-based rank in a candidate list."""
    return {key: i for i, key in enumerate(cands, 1)}


def zscore(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 1e-9 else np.zeros_like(x)


def convex(keys: list[int], dense: Candidates, lex: Candidates, w_dense: float, w_lex: float) -> dict[int, float]:
    d_floor = min((v[0] for v in dense.values()), default=0.0)
    l_floor = min((v[0] for v in lex.values()), default=0.0)
    d = zscore(np.array([dense[key][0] if key in dense else d_floor for key in keys]))
    lx = zscore(np.log1p(np.maximum([lex[key][0] if key in lex else l_floor for key in keys], 0.0)))
    return dict(zip(keys, (w_dense * d + w_lex * lx).tolist(), strict=True))


def rrf(keys: list[int], d_rank: dict[int, int], l_rank: dict[int, int], w_dense: float, w_lex: float,
        rrf_k: int) -> dict[int, float]:
    return {key: (w_dense / (rrf_k + d_rank[key]) if key in d_rank else 0.0)
            + (w_lex / (rrf_k + l_rank[key]) if key in l_rank else 0.0) for key in keys}


def fuse(r: RetrievalSettings, keys: list[int], dense: Candidates, lex: Candidates, d_rank: dict[int, int],
         l_rank: dict[int, int]) -> dict[int, float]:
    """key -> fused score (higher is better) by ``r.fusion``; ``dense`` holds every key's exact score."""
    if r.fusion == "rrf":
        return rrf(keys, d_rank, l_rank, r.dense_weight, r.lexical_weight, r.rrf_k)
    return convex(keys, dense, lex, r.dense_weight, r.lexical_weight)
