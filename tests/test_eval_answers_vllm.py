"""``pubmind eval answers`` end to end: the real vLLM CPU server with the tiny model, two models (base and a
LoRA adapter from the registry) on 20 PubMedQA test questions, retrieval from an index of PubMedQA abstracts,
the table printed and the run stored and listed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_finetune import untrained_adapter

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

N_QUESTIONS = 20
N_ABSTRACTS = 60  # the index: the 20 questions' abstracts and 40 others (the full 1,000 take minutes here)


@pytest.fixture()
def small_pubmedqa(shared_data: Path, tmp_path: Path) -> Path:
    """A PubMedQA subset laid out like the real one (ori_pqal.json + test_ground_truth.json beside it)."""
    folder = shared_data / "pubmedqa/data"
    data = json.loads((folder / "ori_pqal.json").read_text())
    test = json.loads((folder / "test_ground_truth.json").read_text())
    keep = list(test)[:N_QUESTIONS]
    keep += [p for p in data if p not in test][:N_ABSTRACTS - N_QUESTIONS]
    out = tmp_path / "pubmedqa"
    out.mkdir()
    (out / "ori_pqal.json").write_text(json.dumps({p: data[p] for p in keep}))
    (out / "test_ground_truth.json").write_text(json.dumps({p: test[p] for p in list(test)[:N_QUESTIONS]}))
    return out / "ori_pqal.json"


def test_eval_answers_two_models_end_to_end(cli: Any, settings: Any, monkeypatch: pytest.MonkeyPatch,
                                            vllm_server: str, tiny_model_dir: Path, small_pubmedqa: Path,
                                            tmp_path: Path) -> None:
    from finetune.registry import AdapterRegistry

    monkeypatch.setenv("PUBMIND_LLM__MODEL", str(tiny_model_dir))
    reg = AdapterRegistry(settings.adapters_dir)
    v = reg.create_version("pqa", untrained_adapter(tiny_model_dir, tmp_path / "lora"), {"base_model": "tiny"})
    reg.promote("pqa", v.version)

    out = tmp_path / "report.md"
    r = cli("eval", "answers", "--data", str(small_pubmedqa), "--limit", str(N_QUESTIONS), "--model", "base",
            "--model", "pqa", "--vllm-url", vllm_server, "--out", str(out))
    assert r.code == 0, r.err
    print(r.out)
    assert "| metric | base | pqa | Δ pqa − base [95% CI] |" in r.out
    assert out.read_text().strip() == r.out.strip()
    assert "answers: 100%" in r.err  # progress shown

    runs = json.loads(cli("eval", "list", "--json").out)
    assert len(runs) == 1
    assert runs[0]["models"] == [{"name": "base", "version": None}, {"name": "pqa", "version": 1}]
    assert runs[0]["n"] == N_QUESTIONS
    assert runs[0]["index_version"] is not None
    run = json.loads(Path(runs[0]["path"]).read_text())
    assert run["stack"]["vllm"] == "0.32.0"  # read from the vLLM that answered
    assert run["stack"]["peft"] is not None
    assert run["config"]["setting"] == "reasoning-required"
    assert run["dataset"]["sha256"] == hashlib.sha256(small_pubmedqa.read_bytes()).hexdigest()
    base, lora = run["records"]["base"], run["records"]["pqa"]
    assert [x["pmid"] for x in base] == [int(p) for p in json.loads(
        (small_pubmedqa.parent / "test_ground_truth.json").read_text())]
    assert all(x["evidence"] for x in base)  # retrieval put passages into every prompt
    assert all(x["completion_tokens"] > 0 for x in base + lora)
    assert all(x["nll_tokens"] > 0 for x in base + lora)  # the gold answer was scored by vLLM
    # the untrained adapter (B = 0) computes exactly what the base model computes: the same gold perplexity
    for a, b in zip(base, lora, strict=True):
        assert b["nll"] == pytest.approx(a["nll"], rel=1e-4)
    assert run["metrics"]["pqa"]["perplexity"] == pytest.approx(run["metrics"]["base"]["perplexity"], rel=1e-4)
    assert run["comparisons"]["pqa"]["accuracy"]["lo"] is not None


def test_retune_gate_records_pubmedqa_figures(server_home: Path, tiny_model_dir: Path, vllm_server: str,
                                              shared_data: Path, tmp_path: Path) -> None:
    """A real re-tune job (training process, gate over vLLM) configured with a PubMedQA subset: the gate's
    PubMedQA accuracy comes from the answer-evaluation code and its report keeps the same metrics."""
    from finetune.jobs import JobRunner
    from finetune.store import CorrectionStore, JobStore
    from tests.conftest import settings_at
    from tests.fixtures_finetune import private_home

    home = private_home(server_home, tmp_path / "home")
    settings = settings_at(home, llm={"model": str(tiny_model_dir), "vllm_url": vllm_server},
                             retrieval={"context_tokens": 96})
    store = CorrectionStore(settings.app_db)
    data = json.loads((shared_data / "pubmedqa/data/ori_pqal.json").read_text())
    for pmid, v in list(data.items())[:4]:
        store.add(question=v["QUESTION"], corrected_answer=f"{v['final_decision']} [PMID:{pmid}]",
                  pmids=[int(pmid)], curator="cur", status="accepted")
    runner = JobRunner(settings, JobStore(settings.app_db), store, train_threads=1)
    pqa_path = shared_data / "pubmedqa/data/ori_pqal.json"
    job = runner.submit("gated", hyperparameters={"epochs": 5, "batch_size": 1}, min_examples=4, created_by="admin",
                        evaluation={"pubmedqa_path": str(pqa_path), "pubmedqa_limit": 5})
    done = runner.wait(job.id, timeout=600, poll=0.5)
    assert done.status == "succeeded", (done.error, (settings.jobs_dir / job.id / "log.txt").read_text()[-3000:])
    ev = done.result["evaluation"]
    assert ev["backend"].startswith("vllm at")
    assert ev["pubmedqa"]["split"] == "test"
    assert ev["pubmedqa"]["sha256"] == hashlib.sha256(pqa_path.read_bytes()).hexdigest()
    for side in ("candidate_metrics", "baseline_metrics"):
        figures = ev[side]["pubmedqa"]
        assert figures["n"] == 5
        assert set(figures) >= {"accuracy", "macro_f1", "unparseable", "citation_precision", "rouge_l"}
        assert ev[side]["pubmedqa_accuracy"] == figures["accuracy"]
    assert any(r.startswith("held-out pubmedqa_accuracy") for r in ev["reasons"])
