"""``pubmind feedback``/``retune``/``adapters`` commands: PubMedQA conversion, validated bulk import,
promotion and rollback from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune.registry import AdapterRegistry
from finetune.store import CorrectionStore
from pubmind.records import Article
from pubmind.settings import Settings
from retrieval.store import CorpusStore


class NoChunks:
    def chunk_many(self, articles: list[Article]) -> list[list]:
        return [[] for _ in articles]


@pytest.fixture(autouse=True)
def corpus(settings: Settings, ft_articles: list[Article], monkeypatch: pytest.MonkeyPatch) -> None:
    """Six PubMedQA articles in the store; vLLM "down" (nothing listens at its URL)."""
    with CorpusStore(settings.corpus_db) as store:
        store.apply(ft_articles[:6], NoChunks())
    monkeypatch.setenv("PUBMIND_LLM__VLLM_URL", "http://127.0.0.1:9")


def test_pubmedqa_conversion_and_import(cli: Any, settings: Settings, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "pqa.jsonl"
    code, stdout, _ = cli("feedback", "pubmedqa", str(shared_data / "pubmedqa/data/ori_pqal.json"),
                          str(out), "--limit", "3")
    assert code == 0
    assert "wrote 3 corrections" in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["pmids"] == [21645374]
    assert rows[0]["corrected_answer"].endswith("[PMID:21645374]")
    assert rows[0]["corrected_answer"].split(".")[0] in ("Yes", "No", "Maybe")
    code, stdout, _ = cli("feedback", "import", str(out), "--accept", "--curator", "alice")
    assert code == 0
    assert "imported 3 corrections" in stdout
    accepted = CorrectionStore(settings.app_db).accepted()
    assert len(accepted) == 3
    assert {f.curator for f in accepted} == {"alice"}
    assert accepted[0].source == "import:pqa.jsonl"


def test_import_is_all_or_nothing(cli: Any, settings: Settings, ft_articles: list[Article],
                                  tmp_path: Path) -> None:
    p = ft_articles[0].pmid
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "Q1?", "corrected_answer": f"Yes [PMID:{p}]", "pmids": [p]}),
        json.dumps({"question": "Q2?", "corrected_answer": "No [PMID:5555]", "pmids": []}),
        "{not json",
        json.dumps({"question": "Q3?", "corrected_answer": "x", "colour": "red"}),
    ]) + "\n")
    code, _, stderr = cli("feedback", "import", str(path))
    assert code == 2
    assert "bad.jsonl:2: corrected_answer cites PMIDs not in the corpus: [5555]" in stderr
    assert "bad.jsonl:3: invalid JSON" in stderr
    assert "bad.jsonl:4: unknown fields ['colour']" in stderr
    assert "3 invalid lines" in stderr
    assert CorrectionStore(settings.app_db).find() == []


def test_review_and_adapters_promote_rollback(cli: Any, settings: Settings, tmp_path: Path) -> None:
    fb = CorrectionStore(settings.app_db).add(question="Q?", corrected_answer="A", pmids=[], curator="c")
    code, stdout, _ = cli("feedback", "review", fb.id, "--status", "accepted")
    assert code == 0
    assert CorrectionStore(settings.app_db).get(fb.id).status == "accepted"
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    reg = AdapterRegistry(settings.adapters_dir)
    for _ in range(2):
        reg.create_version("onco", src, {"base_model": "tiny"})
    code, stdout, _ = cli("adapters", "promote", "onco", "1")
    assert code == 0
    assert json.loads(stdout)["lora_name"] == "onco@v1"
    code, stdout, _ = cli("adapters", "promote", "onco", "2")
    served = json.loads(stdout)["served"]
    assert served["serving"] == "onco@v2"
    assert "not reachable" in served["vllm"]  # said, not hidden
    code, stdout, _ = cli("adapters", "rollback", "onco")
    assert code == 0
    assert json.loads(stdout)["current"] == 1
    code, stdout, _ = cli("adapters", "list")
    assert json.loads(stdout)[0]["current"] == 1
    code, _, stderr = cli("adapters", "promote", "onco", "7")
    assert code == 1
    assert "has no version 7" in stderr
    code, _, stderr = cli("retune", "--adapter", "onco", "--min-examples", "5")
    assert code == 1
    assert "1 accepted corrections, a re-tune needs min_examples=5" in stderr
