"""Fixtures for finetune tests: a fake corpus/retriever over real PubMedQA articles (unit tests), the tiny
model's tokenizer, and a private copy of the indexed server corpus (integration/e2e: jobs write adapters,
jobs and the app database into it, which must not leak into other tests' shared home)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pubmind.records import Article


class FakeCorpus:
    """``get_many`` over a dict of articles (what validation and dataset building need of CorpusStore)."""

    def __init__(self, articles: Iterable[Article]) -> None:
        self.articles = {a.pmid: a for a in articles}

    def get_many(self, pmids: Iterable[int]) -> dict[int, Article]:
        return {p: self.articles[p] for p in pmids if p in self.articles}


class FakeRetriever:
    """Ranks articles by words their abstract shares with the question (deterministic), best first."""

    def __init__(self, articles: Sequence[Article]) -> None:
        self.articles = list(articles)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, question: str, k: int) -> list[Article]:
        self.calls.append((question, k))
        q = set(question.lower().split())
        ranked = sorted(self.articles, key=lambda a: (-len(q & set(a.abstract_text.lower().split())), a.pmid))
        return ranked[:k]


@pytest.fixture(scope="session")
def ft_pubmedqa(shared_data: Path) -> list[tuple[Article, str]]:
    """12 PubMedQA items as (article, question); abstracts cut to their first 30 words (several fit in one
    prompt). Like the real corpus, articles have no title: the question is not in the document."""
    import msgspec

    from pubmind.records import AbstractSection
    from retrieval.pubmedqa import load_pubmedqa, to_article

    data = load_pubmedqa(shared_data / "pubmedqa/data/ori_pqal.json")
    out = []
    for pmid, rec in list(data.items())[:12]:
        a = to_article(pmid, rec)
        words = a.abstract_text.split()[:30]
        out.append((msgspec.structs.replace(a, abstract=(AbstractSection(" ".join(words)),)), rec["QUESTION"]))
    return out


@pytest.fixture(scope="session")
def ft_articles(ft_pubmedqa: list[tuple[Article, str]]) -> list[Article]:
    return [a for a, _ in ft_pubmedqa]


@pytest.fixture(scope="session")
def ft_questions(ft_pubmedqa: list[tuple[Article, str]]) -> dict[int, str]:
    """PMID -> the PubMedQA question written for that article."""
    return {a.pmid: q for a, q in ft_pubmedqa}


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


def untrained_adapter(model_dir: Path, out: Path) -> Path:
    """A real PEFT LoRA for ``model_dir`` as ``save_pretrained`` writes it, untrained (B = 0: answers exactly
    like the base model): stands in for an earlier deployed version."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out

