"""Answer-evaluation metrics (pure functions over hand-made records), bootstrap, storage and the CLI's input
checks (``finetune.answer_eval``, ``pubmind eval answers|list``); the end-to-end run with vLLM is in
tests/test_eval_answers_vllm.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from finetune.answer_eval import (
    compare,
    gold_span_nll,
    list_runs,
    load_test_labels,
    markdown,
    metric_value,
    paired_bootstrap,
    rouge_l,
    save_run,
    select_questions,
    summarize,
)
from pubmind.errors import InvalidInput


def rec(pmid: int, gold: str, decision: str | None, evidence: list[int], cited: list[int],
        nll: float | None = None, nll_tokens: int = 0, rouge: float = 0.0) -> dict[str, Any]:
    """One per-question record as the runner writes it (unsupported = cited PMIDs outside the evidence)."""
    return {"pmid": pmid, "gold": gold, "decision": decision, "evidence": evidence, "cited": cited,
            "unsupported": [p for p in cited if p not in evidence], "rouge_l": rouge, "nll": nll,
            "nll_tokens": nll_tokens, "latency_s": 1.0, "prompt_tokens": 100, "completion_tokens": 10}


# r1 right and cites its gold PMID; r2 unparseable, cites nothing, gold not retrieved; r3 wrong and cites a
# PMID outside the evidence (99) next to its gold one
RECORDS = [rec(1, "yes", "yes", [1, 2], [1], nll=2.0, nll_tokens=2, rouge=0.5),
           rec(2, "no", None, [3], [], nll=4.0, nll_tokens=2, rouge=0.25),
           rec(3, "maybe", "no", [3], [3, 99], rouge=0.0)]


def test_summarize_hand_made_records() -> None:
    s = summarize(RECORDS, wall_seconds=3.0)
    assert s["accuracy"] == pytest.approx(1 / 3)  # the unparseable answer counts as wrong
    assert s["unparseable"] == 1
    assert s["macro_f1"] == pytest.approx(1 / 3)  # yes: F1 1; no: 0 (one false positive); maybe: 0
    assert s["citation_precision"] == pytest.approx(2 / 3)  # 2 of 3 citations were in the evidence
    assert s["citation_recall"] == pytest.approx(2 / 3)  # r1 and r3 cite their gold PMID
    assert s["unsupported_rate"] == pytest.approx(1 / 3)  # r3
    assert s["no_citation_rate"] == pytest.approx(1 / 3)  # r2
    assert s["gold_in_evidence"] == pytest.approx(2 / 3)
    assert s["rouge_l"] == pytest.approx(0.25)
    assert s["perplexity"] == pytest.approx(math.exp(6.0 / 4))  # per token over the scored answers
    assert s["tokens_per_s"] == pytest.approx(10.0)


def test_macro_f1_counts_unparseable_as_wrong_never_as_a_label() -> None:
    rs = [rec(i, g, p, [], []) for i, (g, p) in enumerate(
        [("yes", "yes"), ("yes", "no"), ("no", "no"), ("maybe", None)])]
    # yes: P 1, R 1/2 -> 2/3; no: P 1/2, R 1 -> 2/3; maybe: no true positive -> 0
    assert metric_value(rs, "macro_f1") == pytest.approx(4 / 9)


def test_all_unparseable_scores_zero() -> None:
    rs = [rec(i, "yes", None, [i], []) for i in range(4)]
    s = summarize(rs)
    assert s["accuracy"] == 0.0
    assert s["macro_f1"] == 0.0
    assert s["unparseable"] == 4


def test_no_citations_and_no_evidence_leave_citation_metrics_undefined() -> None:
    no_cites = summarize([rec(1, "yes", "yes", [1], []), rec(2, "no", "no", [2], [])])
    assert no_cites["citation_precision"] is None  # nothing cited: precision undefined, not 0 or 1
    assert no_cites["citation_recall"] == 0.0
    assert no_cites["no_citation_rate"] == 1.0
    closed_book = summarize([rec(1, "yes", "yes", [], [])])
    assert closed_book["citation_recall"] is None  # no evidence: nothing could be cited
    assert closed_book["gold_in_evidence"] is None


def test_citation_outside_the_evidence_is_unsupported() -> None:
    s = summarize([rec(1, "yes", "yes", [1], [12345678])])
    assert s["citation_precision"] == 0.0
    assert s["unsupported_rate"] == 1.0
    assert s["citation_recall"] == 0.0


def test_paired_bootstrap_identical_models_have_a_zero_interval() -> None:
    d = paired_bootstrap(RECORDS, RECORDS, "accuracy", n_boot=200)
    assert d == {"delta": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_bootstrap_pairs_the_questions() -> None:
    # b is right exactly where a is wrong on 20 of 30 questions: unpaired resampling would blur the sign,
    # paired resampling keeps delta = (#b right - #a right)/n with an interval that excludes 0
    a = [rec(i, "yes", "yes" if i < 10 else "no", [], []) for i in range(30)]
    b = [rec(i, "yes", "no" if i < 5 else "yes", [], []) for i in range(30)]
    d = paired_bootstrap(a, b, "accuracy", n_boot=2000, seed=1)
    assert d["delta"] == pytest.approx(25 / 30 - 10 / 30)
    assert d["lo"] > 0
    assert d["lo"] <= d["delta"] <= d["hi"]


def test_paired_bootstrap_rejects_different_questions() -> None:
    with pytest.raises(InvalidInput):
        paired_bootstrap(RECORDS, list(reversed(RECORDS)), "accuracy")


def test_paired_bootstrap_of_an_undefined_metric_is_none() -> None:
    a = [rec(1, "yes", "yes", [1], [])]
    assert paired_bootstrap(a, a, "citation_precision")["delta"] is None


def test_gold_span_nll_scores_only_the_answer_tokens() -> None:
    assert gold_span_nll([1, 2, 3], [1, 2, 3, 7, 8], [None, -1.0, -1.0, -0.5, -1.5]) == (2.0, 2)
    # a token merged across the prompt/answer boundary (3 -> 9) counts as answer
    assert gold_span_nll([1, 2, 3], [1, 2, 9, 8], [None, -1.0, -0.25, -0.75]) == (1.0, 2)


def test_rouge_l_ignores_citation_keys_and_the_decision_line() -> None:
    assert rouge_l("Statins lower LDL cholesterol [PMID:123].\nDecision: yes", "Statins lower LDL cholesterol.") \
        == pytest.approx(1.0)
    assert rouge_l("Decision: yes", "Statins lower LDL cholesterol.") == 0.0
    assert 0 < rouge_l("statins raise cholesterol", "Statins lower LDL cholesterol.") < 1


def test_select_questions_test_split_order_and_limit(shared_data: Path) -> None:
    from retrieval.pubmedqa import load_pubmedqa

    path = shared_data / "pubmedqa/data/ori_pqal.json"
    labels = load_test_labels(path)
    assert len(labels) == 500
    qs = select_questions(load_pubmedqa(path), "test", 20, labels)
    assert [q.pmid for q in qs] == list(labels)[:20]
    assert [q.gold for q in qs] == [labels[q.pmid] for q in qs]


def test_select_questions_rejects_bad_limit_and_split() -> None:
    with pytest.raises(InvalidInput) as e:
        select_questions({}, "all", 0)
    assert e.value.param == "limit"
    with pytest.raises(InvalidInput) as e:
        select_questions({}, "dev", None)
    assert e.value.param == "split"


def test_test_split_needs_its_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as e:
        load_test_labels(tmp_path / "ori_pqal.json")
    assert "test_ground_truth.json" in e.value.message


def _run(run_id: str, created: str) -> dict[str, Any]:
    b = [rec(i, "yes", "yes" if i % 2 else "no", [i], [i]) for i in range(6)]
    a = [rec(i, "yes", "yes", [i], []) for i in range(6)]
    records = {"base": a, "qa@v1": b}
    return {"id": run_id, "created_at": created,
            "dataset": {"split": "test", "n": 6, "sha256": "ab" * 32, "limit": 6},
            "config": {"setting": "reasoning-free"}, "index": None,
            "models": [{"name": "base", "version": None}, {"name": "qa@v1", "version": 1}],
            "metrics": {m: summarize(r) for m, r in records.items()}, "comparisons": compare(records, 100),
            "records": records}


def test_markdown_has_models_side_by_side_with_deltas() -> None:
    md = markdown(_run("r1", "2026-01-01T00:00:00+00:00"))
    lines = md.splitlines()
    assert lines[2] == "| metric | base | qa@v1 | Δ qa@v1 − base [95% CI] |"
    acc = next(line for line in lines if line.startswith("| accuracy |"))
    assert acc.startswith("| accuracy | 1.000 | 0.500 | -0.500 [")


def test_runs_are_stored_and_listed_newest_first(settings: Any) -> None:
    save_run(settings, _run("old", "2026-01-01T00:00:00+00:00"))
    path = save_run(settings, _run("new", "2026-02-01T00:00:00+00:00"))
    (path.parent / "broken.json").write_text("{not json")
    runs = list_runs(settings)
    assert [r["id"] for r in runs if "error" not in r] == ["new", "old"]
    assert runs[0]["models"] == [{"name": "base", "version": None}, {"name": "qa@v1", "version": 1}]
    assert [r["id"] for r in runs if "error" in r] == ["broken"]  # listed with its error, not skipped
    assert json.loads(path.read_text())["records"]["qa@v1"][1]["decision"] == "yes"


def test_cli_eval_list_and_bad_input(cli: Any, settings: Any, shared_data: Path) -> None:
    r0 = cli("eval", "list")
    assert r0.out.strip() == "no stored runs"
    data = str(shared_data / "pubmedqa/data/ori_pqal.json")
    r = cli("eval", "answers", "--data", data, "--limit", "0")
    assert r.code == 2
    assert "--limit" in r.err
    r = cli("eval", "answers", "--data", data, "--limit", "2", "--model", "nosuch")
    assert r.code == 1
    assert "--model 'nosuch'" in r.err
    save_run(settings, _run("r1", "2026-01-01T00:00:00+00:00"))
    listed = json.loads(cli("eval", "list", "--json").out)
    assert [r["id"] for r in listed] == ["r1"]


def test_gate_prompts_and_scoring_of_texts_generated_elsewhere(settings: Any, tiny_tokenizer: Any,
                                                               shared_data: Path) -> None:
    from finetune.answer_eval import gate_prompts, score_texts

    path = shared_data / "pubmedqa/data/ori_pqal.json"
    prompts, info = gate_prompts(settings, path, 4, tiny_tokenizer)
    assert info["split"] == "test"  # test_ground_truth.json lies beside the file
    assert [p.q.pmid for p in prompts] == list(load_test_labels(path))[:4]
    assert all(p.evidence == [p.q.pmid] for p in prompts)  # reasoning-free: the question's own abstract
    texts = [f"Answer [PMID:{p.q.pmid}].\nDecision: {p.q.gold}" for p in prompts[:3]] + ["no decision [PMID:1]"]
    summary, records = score_texts(prompts, texts)
    assert [r["decision"] for r in records] == [p.q.gold for p in prompts[:3]] + [None]
    assert summary["accuracy"] == 0.75
    assert summary["unparseable"] == 1
    assert summary["citation_precision"] == 0.75  # PMID 1 was not in the evidence
    assert summary["latency_s_mean"] is None  # not timed: no made-up latency
    with pytest.raises(InvalidInput):
        score_texts(prompts, texts[:2])


def test_no_retrieval_prompts_carry_no_evidence(settings: Any, shared_data: Path) -> None:
    from finetune.answer_eval import build_prompts
    from generation.prompt import DECISION_INSTRUCTION
    from retrieval.pubmedqa import load_pubmedqa

    data = load_pubmedqa(shared_data / "pubmedqa/data/ori_pqal.json")
    qs = select_questions(data, "all", 2)
    prompts = build_prompts(settings, qs, data, "no-retrieval", tokenizer=None, max_tokens=16)
    assert [p.evidence for p in prompts] == [[], []]
    assert prompts[0].messages[-1]["content"].endswith(DECISION_INSTRUCTION)
    records = [rec(p.q.pmid, p.q.gold, p.q.gold, p.evidence, []) for p in prompts]
    assert summarize(records)["citation_recall"] is None  # nothing to cite: not scored as 0
