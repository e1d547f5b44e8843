"""Answer evaluation on PubMedQA (``pubmind eval answers``): models side by side on the same questions, each
answer built by the serving code (``generation.answer``: retrieval, prompt, citation verification) plus the
decision-line instruction for yes/no/maybe scoring.

Settings (``SETTINGS``), as in the literature:
  reasoning-required  the question alone; evidence retrieved from an index of the 1,000 PubMedQA abstracts
                      (built as ``pubmind eval retrieval`` builds it; kept under $PUBMIND_HOME/eval)
  reasoning-free      the question's own (gold) abstract as the only evidence
  no-retrieval        the model alone (no evidence, nothing to cite)

Metrics per model (``summarize``; pure functions over per-question records, plain dicts):
  accuracy, macro_f1    yes/no/maybe (PubMedQA's own metrics); an unparseable decision is wrong (``unparseable``)
  citation_precision    cited PMIDs that were in the evidence of the prompt (micro: over all citations)
  citation_recall       answers that cite the question's own (gold) PMID
  unsupported_rate      answers citing at least one PMID that was not in the evidence
  no_citation_rate      answers citing nothing
  gold_in_evidence      questions whose gold PMID was in the prompt (retrieval's share of the recall)
  rouge_l               ROUGE-L F1 (rouge-score, stemmed) of the answer prose against the gold long answer
  perplexity            exp(mean NLL per token) of the gold long answer as the model's reply (vLLM prompt_logprobs)
  latency_s_*, *_tokens_mean, tokens_per_s   per answer; throughput = completion tokens / the model's wall time
Several models: deltas against the first model with paired-bootstrap 95% intervals (``paired_bootstrap``).

Each run is stored as JSON under ``$PUBMIND_HOME/eval/runs`` (``list_runs``: ``pubmind eval list``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from generation.answer import answer_prompt, check_answer, closed_book_messages, parse_decision, prose
from generation.deploy import AdapterDeployer
from generation.prompt import DECISIONS
from generation.vllm_client import VllmClient, make_client, served_base_name
from pubmind.durable import write_json_atomic
from pubmind.errors import BadSourceFile, ConfigError, InvalidInput, NotFound, PubmindError
from pubmind.settings import Settings
from pubmind.versions import stack_versions

SETTINGS = ("reasoning-required", "reasoning-free", "no-retrieval")
SPLITS = ("test", "all")
TEST_SPLIT_FILE = "test_ground_truth.json"  # the official 500-question test split, beside ori_pqal.json
N_BOOT = 1000  # paired-bootstrap resamples
CONCURRENCY = 4  # requests in flight to vLLM per model
# (metric, higher is better) in table order; the bootstrapped ones first
BOOTSTRAPPED = ("accuracy", "macro_f1", "citation_precision", "citation_recall", "rouge_l", "perplexity")
TABLE = (*BOOTSTRAPPED, "unparseable", "unsupported_rate", "no_citation_rate", "gold_in_evidence",
         "latency_s_mean", "latency_s_p95", "prompt_tokens_mean", "completion_tokens_mean", "tokens_per_s")


# ---- data ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    pmid: int
    question: str
    gold: str  # yes / no / maybe
    long_answer: str


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def select_questions(data: dict[int, dict[str, Any]], split: str, limit: int | None,
                     test_labels: dict[int, str] | None = None) -> list[Question]:
    """The questions of ``split`` (``test``: the PMIDs and labels of ``test_labels``, in its order; ``all``:
    the dataset's order), the first ``limit`` of them."""
    if split not in SPLITS:
        raise InvalidInput(f"--split must be one of {', '.join(SPLITS)}, got {split!r}", param="split")
    if limit is not None and limit < 1:
        raise InvalidInput(f"--limit must be >= 1, got {limit}", param="limit")
    if split == "test":
        if test_labels is None:
            raise InvalidInput("--split test needs the test split's labels", param="split")
        missing = [p for p in test_labels if p not in data]
        if missing:
            raise InvalidInput(f"--split test: {len(missing)} test PMIDs are not in --data (e.g. {missing[0]})",
                               param="data")
        order = [(p, g) for p, g in test_labels.items()]
    else:
        order = [(p, r.get("final_decision", "")) for p, r in data.items()]
    out = []
    for pmid, gold in order[:limit]:
        if gold not in DECISIONS:
            raise InvalidInput(f"--data: PMID {pmid} has label {gold!r}, expected one of {DECISIONS}", param="data")
        rec = data[pmid]
        out.append(Question(pmid, rec["QUESTION"], gold, rec.get("LONG_ANSWER") or ""))
    return out


def load_test_labels(data_path: Path) -> dict[int, str]:
    path = data_path.parent / TEST_SPLIT_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"--split test: {path} not found (the official test split is read from beside "
                           f"--data); use --split all", param="split") from None
    except ValueError as e:
        raise BadSourceFile(str(path), f"not JSON: {e}") from None
    if not isinstance(raw, dict) or not all(str(k).isdigit() for k in raw):
        raise BadSourceFile(str(path), "expected an object PMID -> yes/no/maybe")
    return {int(k): str(v) for k, v in raw.items()}


# ---- metrics (pure) --------------------------------------------------------------------------------------
@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score, Porter-stemmed) of ``prediction``'s prose (no decision line, no citation keys)
    against ``reference``; 0.0 when either is empty."""
    p, r = prose(prediction), reference.strip()
    if not p or not r:
        return 0.0
    return float(_rouge_scorer().score(r, p)["rougeL"].fmeasure)


def gold_span_nll(prefix_ids: Sequence[int], ids: Sequence[int], logprobs: Sequence[float | None]
                  ) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) of the tokens after ``prefix_ids`` in a scored prompt ``ids``
    (the gold answer after the chat prompt). The span starts where ``ids`` stops matching the prefix, so a
    token merged across the boundary counts as answer."""
    start = 0
    while start < min(len(prefix_ids), len(ids)) and prefix_ids[start] == ids[start]:
        start += 1
    span = [lp for lp in logprobs[max(start, 1):] if lp is not None]
    return -float(sum(span)), len(span)


def _parts(records: Sequence[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-question (numerator, denominator) of a ratio metric: value = sum(num) / sum(den)."""
    def col(f: Callable[[dict[str, Any]], float]) -> np.ndarray:
        return np.array([float(f(r)) for r in records], dtype=np.float64)

    ones = np.ones(len(records))
    if metric == "accuracy":
        return col(lambda r: r["decision"] == r["gold"]), ones
    if metric == "citation_precision":
        return col(lambda r: len(r["cited"]) - len(r["unsupported"])), col(lambda r: len(r["cited"]))
    if metric == "citation_recall":
        return col(lambda r: r["pmid"] in r["cited"]), col(lambda r: bool(r["evidence"]))
    if metric == "rouge_l":
        return col(lambda r: r["rouge_l"]), ones
    if metric == "perplexity":
        return col(lambda r: r["nll"] or 0.0), col(lambda r: r["nll_tokens"])
    raise InvalidInput(f"unknown metric {metric!r}", param="metric")


def _ratio(num: np.ndarray, den: np.ndarray, metric: str) -> np.ndarray:
    """sum(num)/sum(den) along the last axis (nan where den sums to 0); exp of it for perplexity."""
    d = den.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(d > 0, num.sum(-1) / np.where(d > 0, d, 1), np.nan)
    return np.exp(v) if metric == "perplexity" else v


def _macro_f1(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Macro-F1 over the labels present in ``gold`` or ``pred`` (codes 0..2; -1 = unparseable: wrong and
    never a label), along the last axis; F1 = 0 for a label with no true positive."""
    f1s, present = [], []
    for c in range(len(DECISIONS)):
        tp = ((gold == c) & (pred == c)).sum(-1)
        fp = ((gold != c) & (pred == c)).sum(-1)
        fn = ((gold == c) & (pred != c)).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1s.append(np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0))
        present.append((gold == c).any(-1) | (pred == c).any(-1))
    f, p = np.stack(f1s), np.stack(present)
    return (f * p).sum(0) / np.maximum(p.sum(0), 1)


def _codes(labels: Sequence[str | None]) -> np.ndarray:
    return np.array([DECISIONS.index(x) if x in DECISIONS else -1 for x in labels], dtype=np.int64)


def metric_value(records: Sequence[dict[str, Any]], metric: str) -> float | None:
    """One bootstrappable metric of a set of per-question records (None when undefined, e.g. no citations)."""
    if not records:
        return None
    if metric == "macro_f1":
        return float(_macro_f1(_codes([r["gold"] for r in records]), _codes([r["decision"] for r in records])))
    v = float(_ratio(*_parts(records, metric), metric))
    return None if math.isnan(v) else v


def summarize(records: Sequence[dict[str, Any]], wall_seconds: float | None = None) -> dict[str, Any]:
    """Set-level metrics of one model's per-question records (see the module doc)."""
    n = len(records)
    out: dict[str, Any] = {"n": n}
    for m in BOOTSTRAPPED:
        out[m] = metric_value(records, m)
    with_evidence = [r for r in records if r["evidence"]]
    out["unparseable"] = sum(r["decision"] is None for r in records)
    out["unsupported_rate"] = (sum(bool(r["unsupported"]) for r in records) / n) if n else None
    out["no_citation_rate"] = (sum(not r["cited"] for r in records) / n) if n else None
    out["gold_in_evidence"] = (sum(r["pmid"] in r["evidence"] for r in with_evidence) / len(with_evidence)
                               if with_evidence else None)
    timed = n > 0 and all(r["latency_s"] is not None for r in records)  # None: generated without timing
    lat = np.array([r["latency_s"] for r in records]) if timed else np.zeros(0)
    out["latency_s_mean"] = float(lat.mean()) if timed else None
    out["latency_s_p95"] = float(np.percentile(lat, 95)) if timed else None
    out["prompt_tokens_mean"] = (sum(r["prompt_tokens"] for r in records) / n) if timed else None
    out["completion_tokens_mean"] = (sum(r["completion_tokens"] for r in records) / n) if timed else None
    out["gold_tokens"] = sum(r["nll_tokens"] for r in records)
    out["tokens_per_s"] = (sum(r["completion_tokens"] for r in records) / wall_seconds
                           if timed and wall_seconds else None)
    return out


def paired_bootstrap(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], metric: str,
                     n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float | None]:
    """``metric``(b) - ``metric``(a) on the same questions (aligned by position; the same PMIDs) and its
    paired-bootstrap 95% interval: both sides are resampled with the same question indices."""
    if len(a) != len(b):
        raise InvalidInput(f"paired bootstrap needs the same questions: {len(a)} vs {len(b)} records", param="b")
    if [r["pmid"] for r in a] != [r["pmid"] for r in b]:
        raise InvalidInput("paired bootstrap needs the same questions in the same order", param="b")
    va, vb = metric_value(a, metric), metric_value(b, metric)
    if va is None or vb is None:
        return {"delta": None, "lo": None, "hi": None}
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    if metric == "macro_f1":
        gold = _codes([r["gold"] for r in a])[idx]
        da = _macro_f1(gold, _codes([r["decision"] for r in a])[idx])
        db = _macro_f1(gold, _codes([r["decision"] for r in b])[idx])
    else:
        (na, ka), (nb, kb) = _parts(a, metric), _parts(b, metric)
        da, db = _ratio(na[idx], ka[idx], metric), _ratio(nb[idx], kb[idx], metric)
    deltas = (db - da)[~np.isnan(db - da)]
    if not len(deltas):
        return {"delta": vb - va, "lo": None, "hi": None}
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"delta": vb - va, "lo": float(lo), "hi": float(hi)}


def compare(records: dict[str, list[dict[str, Any]]], n_boot: int = N_BOOT, seed: int = 0
            ) -> dict[str, dict[str, dict[str, float | None]]]:
    """Every model after the first against the first: {model: {metric: {delta, lo, hi}}}."""
    names = list(records)
    return {m: {k: paired_bootstrap(records[names[0]], records[m], k, n_boot, seed) for k in BOOTSTRAPPED}
            for m in names[1:]}


# ---- report ----------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _fmt_delta(d: dict[str, float | None]) -> str:
    if d["delta"] is None:
        return "-"
    ci = f" [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d["lo"] is not None and d["hi"] is not None else ""
    return f"{d['delta']:+.3f}{ci}"


def markdown(run: dict[str, Any]) -> str:
    """The run as a Markdown table: one column per model, then one delta column per non-reference model."""
    models = [m["name"] for m in run["models"]]
    ref = models[0]
    ds, cfg = run["dataset"], run["config"]
    head = (f"PubMedQA {ds['split']} split, {ds['n']} questions, setting {cfg['setting']}"
            + (f", index {run['index']['version']}" if run.get("index") else "")
            + f" (run {run['id']}, data sha256 {ds['sha256'][:12]})")
    cols = [*models, *(f"Δ {m} − {ref} [95% CI]" for m in models[1:])]
    lines = [head, "", "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for metric in TABLE:
        row = [_fmt(run["metrics"][m].get(metric)) for m in models]
        row += [_fmt_delta(run["comparisons"][m][metric]) if metric in BOOTSTRAPPED else "" for m in models[1:]]
        lines.append(f"| {metric} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---- storage ---------------------------------------------------------------------------------------------
def runs_dir(settings: Settings) -> Path:
    return settings.home / "eval" / "runs"


def save_run(settings: Settings, run: dict[str, Any]) -> Path:
    path = runs_dir(settings) / f"{run['id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, run)
    return path


def list_runs(settings: Settings) -> list[dict[str, Any]]:
    """Stored runs, newest first: id, created_at, dataset, setting, models (name, version) and headline
    metrics. An unreadable run file is listed with its error, not skipped."""
    out = []
    folder = runs_dir(settings)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            run = json.loads(path.read_text())
            out.append({"id": run["id"], "created_at": run["created_at"], "split": run["dataset"]["split"],
                        "n": run["dataset"]["n"], "dataset_sha256": run["dataset"]["sha256"],
                        "setting": run["config"]["setting"],
                        "index_version": (run.get("index") or {}).get("version"),
                        "models": [{"name": m["name"], "version": m["version"]} for m in run["models"]],
                        "accuracy": {m: v["accuracy"] for m, v in run["metrics"].items()},
                        "macro_f1": {m: v["macro_f1"] for m, v in run["metrics"].items()},
                        "path": str(path)})
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append({"id": path.stem, "created_at": "", "path": str(path), "error": f"unreadable: {e!r}"})
    return sorted(out, key=lambda r: r["created_at"], reverse=True)


# ---- running ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    name: str  # as asked: base, NAME or NAME@vN
    served: str  # the name vLLM serves it under (base name or NAME@vN)
    adapter_path: str | None = None
    version: int | None = None


def resolve_models(settings: Settings, names: Sequence[str]) -> list[ModelSpec]:
    """``base`` (or the served base name) and registry adapters (``NAME`` = its current version, ``NAME@vN``)."""
    from finetune.registry import AdapterRegistry

    if not names:
        raise InvalidInput("--model: name at least one model (base, NAME or NAME@vN)", param="model")
    if len(set(names)) != len(names):
        raise InvalidInput(f"--model: a model is named twice in {list(names)}", param="model")
    base = served_base_name(settings.llm)
    reg = AdapterRegistry(settings.adapters_dir)
    out = []
    for n in names:
        if n in ("base", base):
            out.append(ModelSpec(n, base))
            continue
        try:
            v = reg.resolve(n)
        except NotFound as e:
            raise NotFound(f"--model {n!r}: {e.message}", param="model") from None
        out.append(ModelSpec(n, v.lora_name, v.path, v.version))
    return out


@dataclass
class Prompted:
    """One question's prompt (the same for every model)."""

    q: Question
    messages: list[dict[str, str]]
    evidence: list[int]  # PMIDs in the prompt


def build_prompts(settings: Settings, questions: Sequence[Question], data: dict[int, dict[str, Any]],
                  setting: str, tokenizer: Any, max_tokens: int, searcher: Any = None,
                  progress: bool = False) -> list[Prompted]:
    """Each question's messages for ``setting`` (the serving prompt + decision line; see the module doc)."""
    from retrieval.pubmedqa import to_article

    out = []
    for q in tqdm(questions, desc="prompts", unit="q", disable=not progress):
        if setting == "no-retrieval":
            out.append(Prompted(q, closed_book_messages(q.question), []))
            continue
        evidence = (searcher.search(q.question, k=settings.retrieval.k) if setting == "reasoning-required"
                    else [to_article(q.pmid, data[q.pmid])])
        p = answer_prompt(q.question, evidence, tokenizer, settings, max_tokens, decision=True)
        out.append(Prompted(q, p.messages, p.in_prompt))
    return out


def make_record(p: Prompted, text: str, *, latency_s: float | None = None, prompt_tokens: int = 0,
                completion_tokens: int = 0, finish_reason: str | None = None) -> dict[str, Any]:
    """The per-question record of one generated answer: decision, citations checked against the prompt's
    evidence (``generation.answer.check_answer``), ROUGE-L; ``nll``/``nll_tokens`` are filled in by scoring.
    ``latency_s`` None: generated elsewhere without timing (latency and token figures are then None)."""
    report = check_answer(text, p.evidence)
    return {"pmid": p.q.pmid, "gold": p.q.gold, "decision": parse_decision(text), "answer": text,
            "evidence": p.evidence, "cited": report.cited, "unsupported": report.unsupported,
            "rouge_l": rouge_l(text, p.q.long_answer), "nll": None, "nll_tokens": 0,
            "latency_s": None if latency_s is None else round(latency_s, 4), "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "finish_reason": finish_reason}


async def _answer(client: VllmClient, model: ModelSpec, p: Prompted, max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = await client.chat(p.messages, model.served, max_tokens=max_tokens, temperature=0.0)
    return make_record(p, res.text, latency_s=time.perf_counter() - t0, prompt_tokens=res.prompt_tokens,
                       completion_tokens=res.completion_tokens, finish_reason=res.finish_reason)


async def _score_gold(client: VllmClient, model: ModelSpec, p: Prompted, tokenizer: Any) -> tuple[float, int]:
    """(NLL, tokens) of the gold long answer as ``model``'s reply to ``p``'s prompt."""
    prefix = tokenizer.encode(tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False)
    ids, lps = await client.prompt_logprobs([*p.messages, {"role": "assistant", "content": p.q.long_answer}],
                                            model.served)
    return gold_span_nll(prefix, ids, lps)


async def answer_all(client: VllmClient, models: Sequence[ModelSpec], prompts: Sequence[Prompted], tokenizer: Any,
                     max_tokens: int, *, score_gold: bool = True, concurrency: int = CONCURRENCY,
                     progress: bool = False) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Per-question records per model (models one after the other, ``concurrency`` questions in flight) and
    each model's wall seconds (generation only); the adapters must be loaded already. The gold answers are
    scored afterwards ONE request at a time: vLLM 0.32 with LoRA enabled crashes its engine when a
    ``prompt_logprobs`` request shares a batch with other requests (its LoRA logits path sizes its indices
    per request, not per prompt token)."""
    sem = asyncio.Semaphore(concurrency)
    records: dict[str, list[dict[str, Any]]] = {}
    walls: dict[str, float] = {}
    with tqdm(total=len(models) * len(prompts), desc="answers", unit="ans", disable=not progress) as bar:
        for m in models:
            async def one(p: Prompted, m: ModelSpec = m) -> dict[str, Any]:
                async with sem:
                    r = await _answer(client, m, p, max_tokens)
                bar.update(1)
                return r

            t0 = time.perf_counter()
            records[m.name] = list(await asyncio.gather(*(one(p) for p in prompts)))
            walls[m.name] = time.perf_counter() - t0
    if score_gold:
        with tqdm(total=len(models) * len(prompts), desc="perplexity", unit="ans", disable=not progress) as bar:
            for m in models:
                for p, r in zip(prompts, records[m.name], strict=True):
                    if p.q.long_answer:
                        r["nll"], r["nll_tokens"] = await _score_gold(client, m, p, tokenizer)
                    bar.update(1)
    return records, walls


def _open_searcher(settings: Settings, data: dict[int, dict[str, Any]], data_sha: str, progress: bool
                   ) -> tuple[Any, Any, dict[str, Any]]:
    """(indexer, searcher, index info) over the PubMedQA abstracts, built once per dataset and index
    configuration (embedder, chunking, index kind) under $PUBMIND_HOME/eval/pubmedqa-<data>-<config> and
    reused."""
    from retrieval.pubmedqa import build_index
    from retrieval.search import Searcher, load_reranker

    config = json.dumps([settings.embedding.model, settings.chunking.model_dump(), settings.index.kind])
    folder = f"pubmedqa-{data_sha[:12]}-{hashlib.sha256(config.encode()).hexdigest()[:8]}"
    s = settings.model_copy(update={"home": settings.home / "eval" / folder})
    ix = build_index(s, data, progress)
    try:
        searcher = Searcher(s, ix.store, ix.index, ix.embedder, load_reranker(s))
    except BaseException:
        ix.close()
        raise
    info = {"version": f"{ix.index.created_at}#g{ix.index.generation}", "path": str(s.home),
            "embedding_model": settings.embedding.model, "mode": settings.retrieval.mode, "k": settings.retrieval.k}
    return ix, searcher, info


def evaluate_answers(settings: Settings, data_path: str | Path, *, models: Sequence[str], split: str = "test",
                     limit: int | None = None, setting: str = "reasoning-required", vllm_url: str | None = None,
                     max_tokens: int | None = None, perplexity: bool = True, n_boot: int = N_BOOT,
                     store: bool = True, progress: bool = False) -> dict[str, Any]:
    """One evaluation run (see the module doc); stored under ``runs_dir`` unless ``store=False``. Without
    ``vllm_url`` (nor ``llm.vllm_url``) a vLLM is launched for the run and stopped after it."""
    from transformers import AutoTokenizer

    from retrieval.pubmedqa import load_pubmedqa

    if setting not in SETTINGS:
        raise InvalidInput(f"--setting must be one of {', '.join(SETTINGS)}, got {setting!r}", param="setting")
    max_tokens = max_tokens or settings.llm.max_tokens
    if not 1 <= max_tokens <= settings.llm.max_tokens:
        raise InvalidInput(f"--max-tokens must be between 1 and {settings.llm.max_tokens} (llm.max_tokens), "
                           f"got {max_tokens}", param="max_tokens")
    started = time.perf_counter()
    data_path = Path(data_path)
    data = load_pubmedqa(data_path)
    sha = file_sha256(data_path)
    questions = select_questions(data, split, limit, load_test_labels(data_path) if split == "test" else None)
    specs = resolve_models(settings, models)
    try:
        tokenizer = AutoTokenizer.from_pretrained(settings.llm.model)
    except OSError as e:
        raise ConfigError(f"llm.model={settings.llm.model!r}: cannot load its tokenizer ({e})",
                          param="llm.model") from None

    ix = searcher = index_info = None
    if setting == "reasoning-required":
        ix, searcher, index_info = _open_searcher(settings, data, sha, progress)
    try:
        prompts = build_prompts(settings, questions, data, setting, tokenizer, max_tokens, searcher, progress)
    finally:
        if ix is not None:
            ix.close()

    if vllm_url:  # a remote vLLM: its key is llm.vllm_api_key (make_client)
        settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"vllm_url": vllm_url})})
    sup = None
    if not settings.llm.vllm_url:
        from generation.supervisor import VllmSupervisor

        adapters = {m.served: m.adapter_path for m in specs if m.adapter_path}
        sup = VllmSupervisor(settings, adapters=lambda: adapters)
        sup.start()
    try:
        records, walls = asyncio.run(_generate(settings, specs, prompts, tokenizer, max_tokens, perplexity,
                                               progress))
        stack = stack_versions(vllm_url=sup.url if sup else settings.llm.vllm_url,
                               vllm_python=settings.llm.vllm_python)
    finally:
        if sup is not None:
            sup.stop()

    run = {
        "id": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {"name": "pubmedqa", "path": str(data_path.absolute()), "sha256": sha, "split": split,
                    "limit": limit, "n": len(questions)},
        "config": {"setting": setting, "max_tokens": max_tokens, "temperature": 0.0, "concurrency": CONCURRENCY, "perplexity": perplexity,
                   "n_boot": n_boot, "llm_model": settings.llm.model, "vllm": "launched" if sup else settings.llm.vllm_url},
        "index": index_info,
        "stack": stack,  # library versions that produced it
        "models": [asdict(m) for m in specs],
        "metrics": {m.name: summarize(records[m.name], walls[m.name]) for m in specs},
        "comparisons": compare(records, n_boot),
        "seconds": round(time.perf_counter() - started, 1),
        "records": records,
    }
    if store:
        run["path"] = str(save_run(settings, run))
    return run


async def _generate(settings: Settings, specs: Sequence[ModelSpec], prompts: Sequence[Prompted], tokenizer: Any,
                    max_tokens: int, perplexity: bool, progress: bool
                    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    from finetune.registry import AdapterRegistry

    async with make_client(settings) as client:
        await client.health()
        deployer = AdapterDeployer.from_settings(client, AdapterRegistry(settings.adapters_dir), settings)
        for m in specs:
            if m.adapter_path:
                await deployer.ensure_loaded(m.served, m.adapter_path, refresh=True)
        return await answer_all(client, specs, prompts, tokenizer, max_tokens, score_gold=perplexity,
                                progress=progress)


# ---- the re-tune gate ------------------------------------------------------------------------------------
def gate_prompts(settings: Settings, data_path: str | Path, limit: int, tokenizer: Any
                 ) -> tuple[list[Prompted], dict[str, Any]]:
    """The gate's PubMedQA questions (reasoning-free: each question's own abstract is the evidence, so the job
    builds no index): the official test split when ``test_ground_truth.json`` lies beside ``data_path``, else
    the file's order; the first ``limit``. Returns the prompts and what was used (recorded in the report)."""
    from retrieval.pubmedqa import load_pubmedqa

    path = Path(data_path)
    try:
        data = load_pubmedqa(path)
    except PubmindError as e:
        raise InvalidInput(f"evaluation.pubmedqa_path {str(path)!r}: {e.message}",
                           param="evaluation.pubmedqa_path") from None
    split = "test" if (path.parent / TEST_SPLIT_FILE).is_file() else "all"
    questions = select_questions(data, split, limit, load_test_labels(path) if split == "test" else None)
    prompts = build_prompts(settings, questions, data, "reasoning-free", tokenizer, settings.llm.max_tokens)
    return prompts, {"path": str(path), "sha256": file_sha256(path), "split": split, "n": len(prompts),
                     "setting": "reasoning-free"}


def score_texts(prompts: Sequence[Prompted], texts: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, records) of answers generated elsewhere (e.g. by the gate's generator) for ``prompts``."""
    if len(prompts) != len(texts):
        raise InvalidInput(f"{len(texts)} answers for {len(prompts)} prompts", param="texts")
    records = [make_record(p, t) for p, t in zip(prompts, texts, strict=True)]
    return summarize(records), records
