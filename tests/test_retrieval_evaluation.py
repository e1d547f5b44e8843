"""Retrieval metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from pubmind.errors import InvalidInput
from retrieval.evaluation import evaluate, ndcg_at_k, ranking, recall_at_k, reciprocal_rank

L3 = math.log2(3)  # discount at rank 2


def test_ranking_breaks_ties_by_docid() -> None:
    assert ranking({"b": 1.0, "a": 1.0, "c": 2.0}) == ["c", "a", "b"]


def test_single_query_metrics() -> None:
    ranked, rel = ["a", "x", "b", "y"], {"a": 1, "b": 1, "n": 0}
    assert recall_at_k(ranked, rel, 1) == 0.5
    assert recall_at_k(ranked, rel, 2) == 0.5
    assert recall_at_k(ranked, rel, 3) == 1.0
    assert reciprocal_rank(["x", "y", "b"], rel) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y", "b"], rel, k=2) == 0.0
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3)
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(1.5 / (1 + 1 / L3))
    # graded: c=2 at rank 3, d=1 at rank 2; ideal c then d
    assert ndcg_at_k(["x", "d", "c"], {"c": 2, "d": 1}, 10) == pytest.approx((1 / L3 + 2 / 2) / (2 + 1 / L3))
    # cut-off: relevant doc below k counts nothing
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert recall_at_k([], {"a": 1}, 5) == 0.0


def test_evaluate_averages_over_judged_queries() -> None:
    run = {
        "q1": {"a": 0.9, "x": 0.8, "b": 0.7, "y": 0.1},
        "q2": {"x": 0.5, "d": 0.4, "c": 0.3},
        "q4": {"z": 1.0},  # not judged: ignored
    }
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2, "d": 1}, "q3": {"e": 1}, "q5": {"f": 0}}
    m = evaluate(run, qrels, ks=[1, 3])
    # q1, q2 and q3 (missing from the run: all zero) are judged; q5 has no relevant doc
    assert m["queries"] == 3
    assert m["recall@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0) / 3)
    n1 = 1.5 / (1 + 1 / L3)
    n2 = (1 / L3 + 1) / (2 + 1 / L3)
    assert m["ndcg@10"] == pytest.approx((n1 + n2) / 3)
    assert set(m) == {"recall@1", "recall@3", "mrr", "ndcg@10", "queries"}


def test_perfect_run_scores_one() -> None:
    qrels = {str(i): {f"d{i}": 1} for i in range(5)}
    run = {str(i): {f"d{i}": 2.0, "other": 1.0} for i in range(5)}
    m = evaluate(run, qrels)
    assert all(m[k] == 1.0 for k in ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"))


@pytest.mark.parametrize(("kwargs", "param"), [({"ks": [0]}, "k"), ({"qrels": {"q": {"a": 0}}}, "qrels")])
def test_evaluate_rejects_bad_input(kwargs: dict, param: str) -> None:
    args = {"run": {"q": {"a": 1.0}}, "qrels": {"q": {"a": 1}}, **kwargs}
    with pytest.raises(InvalidInput) as e:
        evaluate(**args)
    assert e.value.param == param
