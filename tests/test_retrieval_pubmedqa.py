"""The ``eval retrieval`` command (``retrieval.pubmedqa``): PubMedQA recall/MRR/nDCG per mode, queries files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.store import CorpusStore


@pytest.fixture(scope="module")
def mini_pubmedqa(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 25 PubMedQA records (written to tmp, not the repo)."""
    data = json.loads((shared_data / "pubmedqa" / "data" / "ori_pqal.json").read_text())
    path = tmp_path_factory.mktemp("pqa") / "mini.json"
    path.write_text(json.dumps(dict(list(data.items())[:25])))
    return path


def test_eval_retrieval_cli(mini_pubmedqa: Path, tmp_path: Path, cli) -> None:
    data = json.loads(mini_pubmedqa.read_text())
    pmids = list(data)
    tsv = tmp_path / "q.tsv"
    tsv.write_text("pmid\tquery\n" + f"{pmids[0]}\tmitochondrial dynamics in perforation formation of leaves\n"
                   f"{pmids[1]}\toptotype comparison for amblyopic eyes\n")
    work = tmp_path / "work"
    r = cli("eval", "retrieval", "--data", str(mini_pubmedqa),
            "--workdir", str(work), "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert set(res) == {"dense", "lexical", "hybrid"}
    for m in res.values():
        assert m["queries"] == 25
        assert m["recall@10"] >= 0.95
        assert m["recall@1"] <= m["recall@5"] <= m["recall@10"]
        assert 0 < m["ndcg@10"] <= 1
        assert m["mrr"] >= m["recall@1"]
    # documents carry no question text: the first article's chunks do not contain its question
    st = CorpusStore(work / "corpus.sqlite")
    chunk_texts = st.chunk_text(st.chunk_ids_of([int(pmids[0])])[int(pmids[0])])
    st.close()
    assert data[pmids[0]]["QUESTION"] not in " ".join(chunk_texts.values())
    assert "CONCLUSIONS: " in " ".join(chunk_texts.values())
    r = cli("eval", "retrieval", "--data", str(mini_pubmedqa),
            "--queries", str(tsv), "--mode", "hybrid", "--workdir", str(work), "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert list(res) == ["hybrid"]
    assert res["hybrid"]["queries"] == 2
    assert res["hybrid"]["recall@5"] == 1.0


@pytest.mark.parametrize(("content", "msg"), [
    ("query\tpmid\n1\tx\n", "header"),
    ("pmid\tquery\n99999999\tsomething\n", "PMID 99999999 is not in the dataset"),
    ("pmid\tquery\nabc\tsomething\n", ":2:"),
])
def test_eval_rejects_bad_queries_file(mini_pubmedqa: Path, tmp_path: Path, cli, content: str,
                                       msg: str) -> None:
    tsv = tmp_path / "q.tsv"
    tsv.write_text(content)
    r = cli("eval", "retrieval", "--data", str(mini_pubmedqa),
            "--queries", str(tsv), "--json")
    assert r.code == 1
    assert msg in r.err
