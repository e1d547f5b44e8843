"""Training data: validation of corrections, serving-format examples (RAFT evidence), answer-only loss mask,
deterministic split, de-duplication, content-hash versioning."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from finetune.dataset import (
    IGNORE_INDEX,
    assign_splits,
    build_dataset,
    prompt_text,
    read_dataset,
    split_of,
    tokenize_example,
    validate_correction,
    write_dataset,
)
from finetune.store import Correction
from generation.prompt import SYSTEM_PROMPT, build_messages, render_evidence
from pubmind.errors import InvalidInput
from pubmind.records import Article
from pubmind.settings import Settings


def fb(question: str, answer: str, pmids: list[int], created_at: float | None = None, fid: str = "") -> Correction:
    return Correction(id=fid or f"fb_{abs(hash((question, answer))) % 10**8}", created_at=created_at or time.time(),
                    curator="cur", answer_id=None, question=question, corrected_answer=answer, pmids=pmids,
                    rating=None, note="", source="test", status="accepted", reviewer="cur", reviewed_at=None,
                    provenance={})


def small(settings: Settings, **finetune: Any) -> Settings:
    return settings.model_copy(update={
        "finetune": settings.finetune.model_copy(update=finetune),
        "retrieval": settings.retrieval.model_copy(update={"context_tokens": 400})})


# ---- validation -------------------------------------------------------------------------------------------
def test_validate_correction(fake_corpus: Any, ft_articles: list[Article]) -> None:
    p1, p2 = ft_articles[0].pmid, ft_articles[1].pmid
    ok = validate_correction(fake_corpus, question=" Q? ", corrected_answer=f"Yes [PMID:{p1}]. ", pmids=[p2, p2],
                             max_question_chars=100)
    assert ok == ("Q?", f"Yes [PMID:{p1}].", [p2])
    cases = [
        (dict(pmids=[99999999]), "pmids", r"pmids not in the corpus: \[99999999\]"),
        (dict(corrected_answer="See [PMID:424242]."), "corrected_answer", "cites PMIDs not in the corpus: .424242"),
        (dict(corrected_answer="  "), "corrected_answer", "corrected_answer must be a non-empty string"),
        (dict(question=""), "question", "question must be a non-empty string"),
        (dict(question="x" * 101), "question", "question is 101 characters, the limit is 100"),
        (dict(corrected_answer="y" * 9000), "corrected_answer", "the limit is 8000"),
        (dict(pmids=["12"]), "pmids", "pmids must be a list of integers"),
        (dict(pmids=[-3]), "pmids", "pmids must be positive"),
        (dict(rating=9), "rating", "rating must be an integer from 1 to 5"),
    ]
    for override, param, msg in cases:
        args = dict(question="Q?", corrected_answer=f"Yes [PMID:{p1}]", pmids=[p1], **{})
        args.update(override)
        with pytest.raises(InvalidInput, match=msg) as e:
            validate_correction(fake_corpus, max_question_chars=100, **args)
        assert e.value.param == param
    # the abstention reply cites nothing and is a valid correction
    validate_correction(fake_corpus, question="Q?", corrected_answer="The retrieved literature does not answer "
                        "this question.", pmids=[], max_question_chars=100)


# ---- examples -----------------------------------------------------------------------------------------------
def test_examples_use_the_serving_prompt_with_distractors(ft_questions: dict[int, str], settings: Settings, tiny_tokenizer: Any,
                                                          fake_corpus: Any, fake_retriever: Any,
                                                          ft_articles: list[Article]) -> None:
    Q = ft_questions
    s = small(settings, distractors=2, heldout_fraction=0.0)
    target = ft_articles[3]
    answer = f"Maybe: the evidence is weak [PMID:{target.pmid}]."
    ds = build_dataset([fb(Q[target.pmid], answer, [target.pmid])], corpus=fake_corpus, retrieve=fake_retriever,
                       tokenizer=tiny_tokenizer, settings=s)
    (ex,) = ds.examples
    assert ex.target == answer
    assert ex.cited_pmids == [target.pmid]
    assert target.pmid in ex.evidence_pmids
    assert len(ex.evidence_pmids) == 3  # cited + 2 distractors
    hits = fake_retriever(Q[target.pmid], 10)
    expected_order = [h.pmid for h in hits if h.pmid in ex.evidence_pmids]
    assert ex.evidence_pmids == expected_order  # retrieval rank order, like the server
    evidence_items = [fake_corpus.articles[p] for p in ex.evidence_pmids]
    text, used = render_evidence(evidence_items, tiny_tokenizer, 400)
    assert ex.prompt_messages == build_messages(Q[target.pmid], text)  # exactly what the server would send
    assert ex.prompt_messages[0]["content"] == SYSTEM_PROMPT
    assert used == ex.evidence_pmids


def test_cited_article_the_retriever_missed_is_added(settings: Settings, tiny_tokenizer: Any, fake_corpus: Any,
                                                     ft_articles: list[Article]) -> None:
    s = small(settings, distractors=1, heldout_fraction=0.0)
    other = ft_articles[7]
    ds = build_dataset([fb("unrelated words entirely", f"No [PMID:{other.pmid}]", [])], corpus=fake_corpus,
                       retrieve=lambda q, k: ft_articles[:2], tokenizer=tiny_tokenizer, settings=s)
    (ex,) = ds.examples
    assert other.pmid in ex.evidence_pmids
    assert ft_articles[0].pmid in ex.evidence_pmids
    assert ex.cited_pmids == [other.pmid]
    assert len(ex.evidence_pmids) == 2


def test_loss_mask_covers_the_answer_only(ft_questions: dict[int, str], settings: Settings, tiny_tokenizer: Any, fake_corpus: Any,
                                          fake_retriever: Any, ft_articles: list[Article]) -> None:
    Q = ft_questions
    a = ft_articles[2]
    ds = build_dataset([fb(Q[a.pmid], f"Yes, it does [PMID:{a.pmid}].", [a.pmid])], corpus=fake_corpus,
                       retrieve=fake_retriever, tokenizer=tiny_tokenizer, settings=small(settings, heldout_fraction=0))
    ex = ds.examples[0]
    row = tokenize_example(tiny_tokenizer, ex, 2048)
    assert row is not None
    prompt_ids = tiny_tokenizer(prompt_text(tiny_tokenizer, ex.prompt_messages), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert row["input_ids"][:n] == prompt_ids  # the serving prompt, token for token
    assert row["labels"][:n] == [IGNORE_INDEX] * n
    answer_labels = row["labels"][n:]
    assert IGNORE_INDEX not in answer_labels
    assert answer_labels == row["input_ids"][n:]
    decoded = tiny_tokenizer.decode(answer_labels)
    assert decoded.startswith(f"Yes, it does [PMID:{a.pmid}].")
    assert "<|end|>" in decoded  # learns to stop
    assert tokenize_example(tiny_tokenizer, ex, n) is None  # too long for max_seq_len: reported, not cut


def test_split_is_deterministic_and_by_question() -> None:
    qs = [f"question number {i}?" for i in range(400)]
    splits = assign_splits(qs, 0.25, seed=0)
    assert splits == assign_splits(qs, 0.25, seed=0)
    assert 60 < splits.count("heldout") < 140
    # independent of order and of the other questions; case/whitespace variants land together
    assert assign_splits(qs[::-1], 0.25, seed=0) == splits[::-1]
    assert [split_of(q, 0.25, 0)[0] for q in qs[:50]] == [split_of(q, 0.25, 0)[0] for q in qs[:50]]
    assert split_of("  Question NUMBER 7? ", 0.25, 0) == split_of("question number 7?", 0.25, 0)
    assert assign_splits(qs, 0.25, seed=1) != splits  # the seed changes the split
    # tiny sets still get one held-out and one training question
    two = assign_splits(["a?", "b?"], 0.2, 0)
    assert sorted(two) == ["heldout", "train"]
    few = assign_splits([f"q{i}?" for i in range(5)], 0.2, 0)
    assert few.count("heldout") == 1  # 5 * 0.2: one, never more by chance
    assert assign_splits(["a?", "b?", "c?"], 0.0, 0) == ["train"] * 3


def test_duplicates_removed_hash_versioning_and_files(ft_questions: dict[int, str], settings: Settings, tiny_tokenizer: Any, fake_corpus: Any,
                                                      fake_retriever: Any, ft_articles: list[Article],
                                                      tmp_path: Path) -> None:
    Q = ft_questions
    s = small(settings, heldout_fraction=0.3)
    a, b, c = ft_articles[:3]
    old = fb(Q[a.pmid], f"Old answer [PMID:{a.pmid}]", [a.pmid], created_at=1.0, fid="fb_old")
    new = fb("  " + Q[a.pmid].upper() + " ", f"New answer [PMID:{a.pmid}]", [a.pmid], created_at=2.0, fid="fb_new")
    rest = [fb(Q[x.pmid], f"Answer [PMID:{x.pmid}]", [x.pmid], created_at=3.0) for x in (b, c)]
    kw = dict(corpus=fake_corpus, retrieve=fake_retriever, tokenizer=tiny_tokenizer, settings=s)
    ds = build_dataset([new, *rest, old], **kw)
    assert ds.duplicates_removed == 1
    assert len(ds.examples) == 3
    assert [e.target for e in ds.examples if e.feedback_id == "fb_new"] == [f"New answer [PMID:{a.pmid}]"]
    again = build_dataset([old, *reversed(rest), new], **kw)  # same corrections, other order
    assert again.hash == ds.hash
    retyped = [msgspec.structs.replace(f, id=f.id + "-copy", curator="bob") for f in (old, new, *rest)]
    assert build_dataset(retyped, **kw).hash == ds.hash  # who entered them is provenance, not training data
    changed = build_dataset([new, rest[0]], **kw)
    assert changed.hash != ds.hash
    path = write_dataset(ds, tmp_path / "ds")
    assert path.name == f"dataset-{ds.hash[:12]}.jsonl"
    back = read_dataset(path)
    assert back.hash == ds.hash
    assert back.examples == ds.examples
    assert back.duplicates_removed == 1
    path.write_text(path.read_text().replace("New answer", "Tampered"))
    with pytest.raises(InvalidInput, match="does not match its content hash"):
        read_dataset(path)


def test_unfittable_or_vanished_citations_are_skipped_with_a_reason(ft_questions: dict[int, str], settings: Settings, tiny_tokenizer: Any,
                                                                    fake_corpus: Any, ft_articles: list[Article]
                                                                    ) -> None:
    Q = ft_questions
    s = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"context_tokens": 120}),
                                    "finetune": settings.finetune.model_copy(update={"heldout_fraction": 0})})
    a = ft_articles[0]
    cite_all = " ".join(f"[PMID:{x.pmid}]" for x in ft_articles[:6])
    gone = fb("q1?", "Answer [PMID:31337]", [], fid="fb_gone")
    big = fb("q2?", f"All of them {cite_all}", [], fid="fb_big")
    fine = fb(Q[a.pmid], f"Yes [PMID:{a.pmid}]", [a.pmid], fid="fb_ok")
    ds = build_dataset([gone, big, fine], corpus=fake_corpus, retrieve=lambda q, k: [], tokenizer=tiny_tokenizer,
                       settings=s)
    assert [e.feedback_id for e in ds.examples] == ["fb_ok"]
    reasons = {x["feedback_id"]: x["reason"] for x in ds.skipped}
    assert "no longer in the corpus: [31337]" in reasons["fb_gone"]
    assert "do not fit the evidence budget" in reasons["fb_big"]
