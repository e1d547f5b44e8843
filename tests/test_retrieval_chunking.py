"""Chunker: sentence splitting, token budget, overlap, stable chunk ids."""

from __future__ import annotations

import itertools

import pytest

from pubmind.records import AbstractSection, Article
from pubmind.settings import ChunkingSettings
from retrieval.chunking import Chunker, make_chunk_id, split_sentences
from tests.fixtures_retrieval import make_article


@pytest.fixture()
def chunker(minilm_tokenizer, settings) -> Chunker:
    return Chunker(minilm_tokenizer, settings.chunking)


def test_split_sentences() -> None:
    text = ("Smith et al. Reported results. Doses were 5 mg (e.g. Daily) in 2 groups! Was it safe? "
            "Yes (p < 0.05). 10 mice died.")
    assert split_sentences(text) == [
        "Smith et al. Reported results.", "Doses were 5 mg (e.g. Daily) in 2 groups!", "Was it safe?",
        "Yes (p < 0.05).", "10 mice died."]


def test_short_article_is_one_chunk(chunker: Chunker) -> None:
    a = make_article(42, sentences=2)
    (c,) = chunker(a)
    assert (c.chunk_id, c.pmid, c.seq) == (42_000, 42, 0)
    assert c.text == a.title + "\n" + " ".join(
        f"{s.label}: {s.text}" for s in a.abstract)


def test_title_only_and_empty(chunker: Chunker) -> None:
    assert [c.text for c in chunker(make_article(1, sentences=0, title="Only a title"))] == ["Only a title"]
    assert chunker(Article(pmid=2)) == []


def test_long_abstract_split_with_overlap_and_budget(minilm_tokenizer) -> None:
    cs = ChunkingSettings(max_tokens=64, overlap_sentences=1)
    ch = Chunker(minilm_tokenizer, cs)
    a = make_article(77, sentences=30)
    chunks = ch(a)
    assert len(chunks) > 3
    assert [c.chunk_id for c in chunks] == [77_000 + i for i in range(len(chunks))]
    lens = [len(minilm_tokenizer(c.text)["input_ids"]) for c in chunks]  # with [CLS]/[SEP]
    assert max(lens) <= 64, lens
    sents = [split_sentences(c.text.split("\n", 1)[1]) for c in chunks]
    for prev, nxt in itertools.pairwise(sents):
        assert prev[-1] == nxt[0]  # one sentence overlap
    assert all(c.text.startswith(a.title + "\n") for c in chunks)
    covered = {s.removeprefix("BACKGROUND: ").removeprefix("RESULTS: ") for ss in sents for s in ss}
    original = {s for sec in a.abstract for s in split_sentences(sec.text)}
    assert covered == original  # nothing lost
    assert ch(a) == chunks  # deterministic: stable ids and texts
    no_overlap = Chunker(minilm_tokenizer, ChunkingSettings(max_tokens=64, overlap_sentences=0))(a)
    assert sum(len(split_sentences(c.text.split("\n", 1)[1])) for c in no_overlap) == len(original)


def test_overlong_sentence_and_title_are_cut(minilm_tokenizer) -> None:
    ch = Chunker(minilm_tokenizer, ChunkingSettings(max_tokens=32, overlap_sentences=1))
    a = Article(pmid=5, title="word " * 40, abstract=(AbstractSection("gene " * 200 + "end."),))
    chunks = ch(a)
    assert len(chunks) > 5
    assert max(len(minilm_tokenizer(c.text)["input_ids"]) for c in chunks) <= 32
    assert chunks[-1].text.endswith("end.")


def test_chunk_id_bounds() -> None:
    with pytest.raises(AssertionError, match="seq"):
        make_chunk_id(1, 1000)
