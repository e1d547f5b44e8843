"""Retrieval metrics over TREC-style dicts: ``run = {qid: {docid: score}}``, ``qrels = {qid: {docid: rel}}``.

Conventions (as trec_eval): a document is relevant when rel > 0; queries absent from ``qrels`` (or with no
relevant document) are ignored; queries in ``qrels`` but absent from ``run`` score 0. A run is ranked by
score descending, ties broken by docid ascending (deterministic). nDCG uses linear gains (rel) and the
log2(rank + 1) discount.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from pubmind.errors import InvalidInput

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, float]]


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Docids best first (score descending, docid ascending on ties)."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def _check_k(k: int) -> None:
    if k <= 0:
        raise InvalidInput(f"k must be >= 1, got {k}", param="k")


def recall_at_k(ranked: list[str], relevant: Mapping[str, float], k: int) -> float:
    """Share of the relevant documents found in the top k."""
    _check_k(k)
    rel = {d for d, r in relevant.items() if r > 0}
    return len(rel.intersection(ranked[:k])) / len(rel) if rel else 0.0


def reciprocal_rank(ranked: list[str], relevant: Mapping[str, float], k: int | None = None) -> float:
    """1 / rank of the first relevant document (within the top k when given), else 0."""
    for i, d in enumerate(ranked[:k] if k else ranked, start=1):
        if relevant.get(d, 0) > 0:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: list[str], relevant: Mapping[str, float], k: int = 10) -> float:
    """DCG of the top k over the DCG of the ideal ranking of the judged documents."""
    _check_k(k)
    dcg = sum(max(relevant.get(d, 0), 0) / math.log2(i + 1) for i, d in enumerate(ranked[:k], start=1))
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 1) for i, r in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def evaluate(run: Run, qrels: Qrels, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean recall@k for each k, MRR and nDCG@10 over the judged queries, plus their count."""
    ks = sorted(set(ks))
    for k in ks:
        _check_k(k)
    qids = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    if not qids:
        raise InvalidInput("qrels has no query with a relevant document", param="qrels")
    totals = dict.fromkeys([*(f"recall@{k}" for k in ks), "mrr", "ndcg@10"], 0.0)
    for q in qids:
        ranked, rel = ranking(run.get(q, {})), qrels[q]
        for k in ks:
            totals[f"recall@{k}"] += recall_at_k(ranked, rel, k)
        totals["mrr"] += reciprocal_rank(ranked, rel)
        totals["ndcg@10"] += ndcg_at_k(ranked, rel, 10)
    out = {m: v / len(qids) for m, v in totals.items()}
    out["queries"] = len(qids)
    return out
