"""Fixtures for finetune tests: a fake corpus/retriever over real PubMedQA articles (unit tests), the tiny
model's tokenizer, and a private copy of the indexed server corpus (integration/e2e: jobs write adapters,
jobs and the app database into it, which must not leak into other tests' shared home)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from retrieval.records import Article


class FakeCorpus:
    """``get_many`` over a dict of articles (what validation and dataset building need of CorpusStore)."""

    def __init__(self, articles: Iterable[Article]) -> None:
        self.articles = {a.pmid: a for a in articles}

    def get_many(self, pmids: Iterable[int]) -> dict[int, Article]:
        return {p: self.articles[p] for p in pmids if p in self.articles}


class FakeRetriever:
    """Ranks articles by words shared with the question (deterministic), returns them as evidence items."""

    def __init__(self, articles: Sequence[Article]) -> None:
        self.articles = list(articles)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, question: str, k: int) -> list[Article]:
        self.calls.append((question, k))
        q = set(question.lower().split())
        ranked = sorted(self.articles, key=lambda a: (-len(q & set(a.title.lower().split())), a.pmid))
        return ranked[:k]


@pytest.fixture(scope="session")
def ft_articles(shared_data: Path) -> list[Article]:
    """12 PubMedQA articles with their abstracts cut to the first 30 words (several fit in one prompt)."""
    import msgspec

    from retrieval.records import AbstractSection
    from tests.fixtures_server import pubmedqa_articles

    out = []
    for a in pubmedqa_articles(shared_data, 12):
        words = a.abstract_text.split()[:30]
        out.append(msgspec.structs.replace(a, abstract=(AbstractSection(" ".join(words)),)))
    return out


@pytest.fixture()
def fake_corpus(ft_articles: list[Article]) -> FakeCorpus:
    return FakeCorpus(ft_articles)


@pytest.fixture()
def fake_retriever(ft_articles: list[Article]) -> FakeRetriever:
    return FakeRetriever(ft_articles)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def private_home(server_home: Path, dest: Path) -> Path:
    """Copy the indexed corpus (store + vector index) of ``server_home`` to ``dest``, without the app
    database, adapters and jobs of other tests."""
    skip = {"app.sqlite", "app.sqlite-wal", "app.sqlite-shm", "adapters", "jobs", "logs"}
    shutil.copytree(server_home, dest, ignore=lambda d, names: [n for n in names if Path(d) == server_home
                                                                and n in skip])
    return dest
