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


# ---- token counts from the per-word cache ----------------------------------------------------------
def _pubmedqa_sentences(shared_data, n: int = 3000) -> list[str]:
    import json

    data = json.loads((shared_data / "pubmedqa/data/ori_pqal.json").read_text())
    sents = [s for v in data.values() for c in v["CONTEXTS"] for s in split_sentences(" ".join(c.split()))]
    odd = ["Café naïve β-blocker 5 µg/kg × 2", "中文 混合 text", "x" * 150, "a - b -- c", "[MASK] [CLS]x",
           "p<0.05,n=12;95%CI", "Ⅻ ﬁne ½ dose"]  # accents, CJK, an over-long word, special tokens, NFKC
    return sents[:n] + odd


@pytest.mark.parametrize("which", ["minilm", "tiny_llm"])
def test_cached_counts_equal_the_tokenizer(which, minilm_tokenizer, shared_data, request) -> None:
    """The per-word cache gives the tokenizer's own counts (WordPiece and byte-level BPE), cold and warm,
    and the same chunks as counting every sentence."""
    if which == "minilm":
        tok = minilm_tokenizer
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(request.getfixturevalue("tiny_model_dir"))
    sents = _pubmedqa_sentences(shared_data)
    c = Chunker(tok, ChunkingSettings(max_tokens=64))
    assert c._words is not None  # both tokenizers are additive by word
    full = c._count_full(sents)
    assert c._count(sents) == full
    assert c._count(sents) == full  # warm
    mixed = Chunker(tok, ChunkingSettings(max_tokens=64))
    assert mixed._count(sents[::2]) == full[::2]  # half the words cached ...
    assert mixed._count(sents) == full  # ... then texts with and without a new word in one call
    plain = Chunker(tok, ChunkingSettings(max_tokens=64))
    plain._words = None
    arts = [Article(pmid=i + 1, title=sents[i], abstract=(AbstractSection(text=" ".join(sents[i:i + 9])),))
            for i in range(0, 600, 3)]
    assert c.chunk_many(arts) == plain.chunk_many(arts)
    wrapped = Chunker(tok, ChunkingSettings(max_tokens=64))
    wrapped._backend = None  # hard cuts through the transformers wrapper: the same pieces
    long = " ".join(sents[:40])
    assert c._cut(long, 20) == wrapped._cut(long, 20)
    assert len(c._cut(long, 20)) > 10


def test_word_cache_is_bounded(minilm_tokenizer, shared_data, monkeypatch) -> None:
    import retrieval.chunking as chunking

    monkeypatch.setattr(chunking, "WORD_CACHE_MAX", 500)
    c = Chunker(minilm_tokenizer, ChunkingSettings())
    sents = _pubmedqa_sentences(shared_data, 400)
    counts = [c._count(sents[i:i + 20]) for i in range(0, len(sents), 20)]
    assert c._words is not None
    assert len(c._words) <= 500
    assert [n for part in counts for n in part] == c._count_full(sents)


@pytest.mark.parametrize(("config", "additive"), [
    ({"normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"},
      "model": {"type": "WordPiece"}}, True),
    ({"normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}, "model": {"type": "BPE"}}, True),
    ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
      "pre_tokenizer": {"type": "Metaspace", "split": True}, "model": {"type": "Unigram"}}, True),
    ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "split": False}, "model": {"type": "Unigram"}}, False),
    ({"normalizer": {"type": "Replace"}, "pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE"}}, False),
    ({"normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split"}]},
      "model": {"type": "BPE"}}, False),
    ({"normalizer": None, "pre_tokenizer": None, "model": {"type": "BPE"}}, False),
    ({"normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "dropout": 0.1}}, False),
    ({"normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "WordPiece"},
      "added_tokens": [{"content": "New York"}]}, False),
])
def test_word_additive_tokenizers(config, additive) -> None:
    from retrieval.chunking import _word_additive

    assert _word_additive(config) is additive


@pytest.mark.parametrize("which", ["minilm", "tiny_llm"])
def test_a_rebuilt_chunker_gives_the_same_chunks_without_transformers(which, minilm_tokenizer, shared_data,
                                                                       request, tmp_path) -> None:
    """``Chunker.rebuild(chunker.portable())`` (how parse processes and Ray tasks get the writer's chunker)
    cuts real articles exactly as the writer's chunker does, hard cuts of over-long titles and sentences
    included; a fresh process rebuilds it without importing transformers."""
    import pickle
    import subprocess
    import sys

    from ingest.parse import iter_records
    from tests.fixtures_ingest import SAMPLE_1334

    if which == "minilm":
        tok = minilm_tokenizer
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(request.getfixturevalue("tiny_model_dir"))
    sents = _pubmedqa_sentences(shared_data)
    arts = [r for r in iter_records(SAMPLE_1334, check_md5=False) if isinstance(r, Article)]
    arts += [Article(pmid=9, title=" ".join(sents[:30]), abstract=(AbstractSection(text=" ".join(sents[:60])),)),
             Article(pmid=10, title="t", abstract=(AbstractSection(text="x " * 300 + "."),))]
    writer = Chunker(tok, ChunkingSettings(max_tokens=48, overlap_sentences=1))
    spec = writer.portable()
    assert spec[0] == "rust" and isinstance(spec[1], str)
    rebuilt = Chunker.rebuild(pickle.loads(pickle.dumps(spec)))
    assert rebuilt.budget == writer.budget
    assert rebuilt.chunk_many(arts) == writer.chunk_many(arts)
    assert any(len(cs) > 3 for cs in writer.chunk_many(arts[-2:]))  # the long ones were cut
    (tmp_path / "spec.pkl").write_bytes(pickle.dumps(spec))
    code = ("import pickle, sys; from retrieval.chunking import Chunker; "
            f"c = Chunker.rebuild(pickle.load(open({str(tmp_path / 'spec.pkl')!r}, 'rb'))); "
            "print(c.budget, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == [str(writer.budget), "False"]
