"""Optional cross-encoder reranking of the fused candidates (``retrieval.rerank_model``)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pubmind.errors import ConfigError
from pubmind.settings import Settings


class Reranker(Protocol):
    """sentence-transformers CrossEncoder or anything with the same ``predict``."""

    def predict(self, sentences: list[tuple[str, str]], **kwargs: Any) -> Any: ...


def load_reranker(settings: Settings) -> Reranker | None:
    """The CrossEncoder named by ``retrieval.rerank_model`` ('' : none)."""
    name = settings.retrieval.rerank_model
    if not name:
        return None
    from sentence_transformers import CrossEncoder

    try:
        reranker: Reranker = CrossEncoder(name, device=settings.embedding.device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"retrieval.rerank_model={name!r}: cannot load: {e}", param="retrieval.rerank_model") from e
    return reranker


def rerank(reranker: Reranker, query: str, order: list[int], text_of: dict[int, str],
           top: int) -> tuple[list[int], dict[int, float]]:
    """Re-order the first ``top`` keys of ``order`` by cross-encoder score of (query, their chunk text);
    the rest keep their place after them. Returns (new order, key -> rerank score)."""
    cand = order[:top]
    pairs = [(query, text_of.get(key, "")) for key in cand]
    scores = np.asarray(reranker.predict(pairs, show_progress_bar=False), dtype=np.float64).ravel()
    by_key = dict(zip(cand, scores.tolist(), strict=True))
    return sorted(cand, key=lambda key: -by_key[key]) + order[len(cand):], by_key
