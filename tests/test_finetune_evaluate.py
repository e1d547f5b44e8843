"""Gate metrics (pure functions) and the promotion decision."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from finetune.evaluate import answer_tokens, gate_decision, pubmedqa_label, rouge_l, score_answers, token_f1


def test_answer_tokens_drop_citations() -> None:
    assert answer_tokens("Statins lower LDL [PMID:123] (PMID: 4; 5).") == ["statins", "lower", "ldl"]


def test_token_f1() -> None:
    assert token_f1("statins lower LDL", "Statins lower LDL [PMID:1]") == 1.0
    assert token_f1("a b c d", "a b x y") == pytest.approx(0.5)  # p = r = 2/4
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # counts clipped: common a, b
    assert token_f1("nothing shared", "other words") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0


def test_rouge_l() -> None:
    assert rouge_l("a b c d", "a b c d") == 1.0
    assert rouge_l("a x b y c", "a b c") == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))  # lcs 3
    assert rouge_l("d c b a", "a b c d") == pytest.approx(0.25)  # lcs 1 of 4 both ways
    assert rouge_l("x", "y") == 0.0


def test_pubmedqa_label() -> None:
    assert pubmedqa_label("Yes. The trial [PMID:1] shows...") == "yes"
    assert pubmedqa_label("Evidence is mixed, so maybe; no firm answer") == "maybe"
    assert pubmedqa_label("Nothing decisive.") is None  # 'Nothing' is not 'no'


def test_score_answers_citation_metrics() -> None:
    s = score_answers(
        answers=["A [PMID:1] and [PMID:9]", "B [PMID:2]", "no citation"],
        evidence=[[1, 2], [2, 3], [4]],
        curator_pmids=[[1, 2], [2], [4]],
        references=["A", "B", "no citation here"],
    )
    assert (s["cited"], s["supported"]) == (3, 2)
    assert s["citation_validity"] == pytest.approx(2 / 3)  # PMID 9 was not in the evidence
    assert s["citation_recall"] == pytest.approx(2 / 4)  # 1 and 2 cited; 2 (of ex. 1) and 4 missed
    assert s["answer_f1"] == pytest.approx((2 / 3 + 1 + 0.8) / 3)  # "A and" vs "A": p=1/2, r=1
    with pytest.raises(Exception, match="same length"):
        score_answers(["a"], [], [], [])


def test_gate_decision_tolerance() -> None:
    base = {"citation_validity": 0.8, "citation_recall": 0.5, "answer_f1": 0.4, "rouge_l": 0.3}
    ok, reasons = gate_decision({**base, "answer_f1": 0.39}, base, 0.02)  # worse, within tolerance
    assert ok
    assert len(reasons) == 4
    bad, reasons = gate_decision({**base, "citation_validity": 0.7}, base, 0.02)
    assert not bad
    assert any(r.startswith("citation_validity 0.700 < baseline 0.800") for r in reasons)
    better, _ = gate_decision({k: v + 0.1 for k, v in base.items()}, base, 0.0)
    assert better
    # a metric only one side reports (PubMedQA not configured for the baseline) is not compared
    assert gate_decision({**base, "pubmedqa_accuracy": 0.1}, base, 0.0)[0]


def test_pubmedqa_accuracy_on_real_items(settings: Any, shared_data: Path, tiny_tokenizer: Any) -> None:
    """The gate scores PubMedQA with the code of `pubmind eval answers` (decision line, test split)."""
    from finetune.answer_eval import gate_prompts, load_test_labels
    from finetune.evaluate import _evaluate
    from pubmind.errors import InvalidInput

    path = shared_data / "pubmedqa/data/ori_pqal.json"
    pqa, info = gate_prompts(settings, path, 4, tiny_tokenizer)
    assert [p.q.pmid for p in pqa] == list(load_test_labels(path))[:4]
    assert info["split"] == "test"

    class Oracle:  # the gold decision line for the first two items; prose without a decision line after
        def __init__(self) -> None:
            self.n = 0

        def generate_many(self, prompts: Sequence[list[dict[str, str]]], model: str) -> list[str]:
            out = []
            for _ in prompts:
                p = pqa[self.n]
                self.n += 1
                out.append(f"Per the trial [PMID:{p.q.pmid}].\nDecision: {p.q.gold}" if self.n <= 2
                           else "Yes, per the trial.")
            return out

    scores = _evaluate(Oracle(), "m", [], pqa)
    assert scores["pubmedqa_accuracy"] == 0.5
    assert scores["pubmedqa_n"] == 4
    assert scores["pubmedqa"]["unparseable"] == 2  # a "Yes" in prose is not a decision line: never guessed
    assert scores["pubmedqa"]["citation_precision"] == 1.0
    with pytest.raises(InvalidInput, match="pubmedqa_path"):
        gate_prompts(settings, shared_data / "nope.json", 1, tiny_tokenizer)
