"""Evaluation gate: a candidate adapter version against the current version (or the base model when none)
on the held-out split, with the serving prompt.

Metrics (pure functions below, micro-averaged over a set):
  citation_validity  share of cited PMIDs that were in the evidence of the prompt
  citation_recall    share of the curator's PMIDs the answer cites
  answer_f1          token F1 between answer and corrected answer (citation keys removed)
  rouge_l            ROUGE-L F-measure (longest common token subsequence), same tokens
  pubmedqa_accuracy  yes/no/maybe accuracy on PubMedQA items (only when configured); scored by the code of
                     ``pubmind eval answers`` (``finetune.answer_eval``: the serving prompt with the decision line,
                     the question's own abstract as evidence), whose full metrics the report keeps under
                     ``pubmedqa`` (macro-F1, unparseable, citations, ROUGE-L)

The same metrics on a sample of the corrections the candidate was trained on (``TRAIN_SAMPLE``) guard against
a candidate that reproduces the accepted corrections worse than the version it replaces (e.g. under-trained).

Generation goes through vLLM (the candidate loaded under its versioned name ``NAME@vN`` by the deployer;
``GATE_CONCURRENCY`` requests at once over the async client) when vLLM answers its health check; otherwise with
transformers + PEFT in this process. The report names the backend used and
why, never silently. The candidate is promoted only if no metric is worse than the baseline's by more than
``settings.finetune.tolerance``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from finetune.answer_eval import Prompted, gate_prompts, score_texts
from finetune.dataset import Dataset, Example
from finetune.registry import AdapterRegistry, AdapterVersion
from generation.citations import parse_citations, verify
from generation.deploy import AdapterDeployer, run_with_deployer
from generation.vllm_client import Message, make_client, served_base_name
from pubmind.errors import InvalidInput, PubmindError
from pubmind.settings import Settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("pubmind.evaluate")

TRAIN_SAMPLE = 20  # trained-on corrections re-checked by the gate (the candidate must not regress on them)
GATE_CONCURRENCY = 8  # gate requests in flight at once against vLLM
METRICS = ("citation_validity", "citation_recall", "answer_f1", "rouge_l", "pubmedqa_accuracy")
_WORD = re.compile(r"\w+", re.UNICODE)
_LABEL = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)


# ---- metric functions -----------------------------------------------------------------------------------
def answer_tokens(text: str) -> list[str]:
    """Lower-cased word tokens with citation keys removed (citations are scored separately)."""
    out, pos = [], 0
    for c in parse_citations(text):
        out.append(text[pos:c.start])
        pos = c.end
    out.append(text[pos:])
    return _WORD.findall(" ".join(out).lower())


def token_f1(prediction: str, reference: str) -> float:
    p, r = answer_tokens(prediction), answer_tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    p, r = answer_tokens(prediction), answer_tokens(reference)
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def pubmedqa_label(answer: str) -> str | None:
    """The first yes/no/maybe word of an answer (None if there is none)."""
    m = _LABEL.search(answer)
    return m.group(1).lower() if m else None


def score_answers(answers: Sequence[str], evidence: Sequence[Sequence[int]], curator_pmids: Sequence[Sequence[int]],
                  references: Sequence[str]) -> dict[str, Any]:
    """Set-level metrics for generated ``answers`` (aligned lists)."""
    if not len(answers) == len(evidence) == len(curator_pmids) == len(references):
        raise InvalidInput("answers, evidence, curator_pmids and references must have the same length",
                           param="answers")
    cited = supported = wanted = recalled = 0
    for ans, ev, cur in zip(answers, evidence, curator_pmids, strict=True):
        rep = verify(ans, ev)
        cited += len(rep.cited)
        supported += len(rep.supported)
        wanted += len(cur)
        recalled += len(set(cur) & set(rep.cited))
    n = len(answers)
    return {
        "n": n,
        "citation_validity": supported / cited if cited else 0.0,
        "citation_recall": recalled / wanted if wanted else 1.0,
        "answer_f1": sum(map(token_f1, answers, references)) / n if n else 0.0,
        "rouge_l": sum(map(rouge_l, answers, references)) / n if n else 0.0,
        "cited": cited, "supported": supported,
    }


def gate_decision(candidate: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> tuple[bool, list[str]]:
    """(promote, reasons): promote unless a metric both sides report drops by more than ``tolerance``."""
    reasons, promote = [], True
    for m in METRICS:
        c, b = candidate.get(m), baseline.get(m)
        if c is None or b is None:
            continue
        if c < b - tolerance:
            promote = False
            reasons.append(f"{m} {c:.3f} < baseline {b:.3f} - tolerance {tolerance:g}")
        else:
            reasons.append(f"{m} {c:.3f} vs baseline {b:.3f}: ok")
    return promote, reasons


# ---- generation backends --------------------------------------------------------------------------------
class Generator(Protocol):
    def generate_many(self, prompts: Sequence[list[Message]], model: str) -> list[str]: ...


class VllmGenerator:
    """Greedy answers from the running vLLM, ``GATE_CONCURRENCY`` at a time; ``model`` is a served name
    (``base`` or ``NAME@vN``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.max_tokens = settings, settings.llm.max_tokens

    def generate_many(self, prompts: Sequence[list[Message]], model: str) -> list[str]:
        async def run() -> list[str]:
            limit = asyncio.Semaphore(GATE_CONCURRENCY)
            async with make_client(self.settings) as client:
                async def one(messages: list[Message]) -> str:
                    async with limit:
                        return (await client.chat(messages, model, max_tokens=self.max_tokens, temperature=0.0)).text

                return list(await asyncio.gather(*(one(m) for m in prompts)))

        return asyncio.run(run())


class LocalGenerator:
    """Greedy answers with transformers (+ PEFT adapters) in this process. ``model`` is ``base`` or an
    adapter folder path."""

    def __init__(self, base_model: str, max_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Any: transformers types apply_chat_template's result as a union that no isinstance narrows
        self.tokenizer: Any = AutoTokenizer.from_pretrained(base_model)
        self.base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).eval()
        self.max_tokens = max_tokens
        self._models: dict[str, Any] = {"base": self.base}  # base, "peft" (a PeftModel), adapter path -> it

    def generate_many(self, prompts: Sequence[list[Message]], model: str) -> list[str]:
        return [self.generate(m, model) for m in prompts]

    def _model(self, model: str) -> Any:
        if model not in self._models:
            from peft import PeftModel

            if not self._models.get("peft"):
                self._models["peft"] = PeftModel.from_pretrained(self.base, model, adapter_name=model)
            else:
                self._models["peft"].load_adapter(model, adapter_name=model)
            self._models[model] = self._models["peft"]
        return self._models[model]

    def generate(self, messages: list[dict[str, str]], model: str) -> str:
        import torch

        m = self._model(model)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        with torch.no_grad():
            if model == "base" and "peft" in self._models:
                with self._models["peft"].disable_adapter():
                    out = self._models["peft"].generate(**ids, max_new_tokens=self.max_tokens, do_sample=False)
            else:
                if model != "base":
                    m.set_adapter(model)
                out = m.generate(**ids, max_new_tokens=self.max_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


# ---- the gate ------------------------------------------------------------------------------------------
def _evaluate(gen: Generator, model: str, heldout: Sequence[Example], pqa: Sequence[Prompted]) -> dict[str, Any]:
    t0 = time.monotonic()
    answers = gen.generate_many([e.prompt_messages for e in heldout], model)
    scores = score_answers(answers, [e.evidence_pmids for e in heldout], [e.cited_pmids for e in heldout],
                           [e.target for e in heldout])
    if pqa:
        summary, _ = score_texts(pqa, gen.generate_many([p.messages for p in pqa], model))
        scores["pubmedqa"] = summary  # the metrics of `pubmind eval answers` (latency/perplexity not measured here)
        scores["pubmedqa_accuracy"] = summary["accuracy"]
        scores["pubmedqa_n"] = summary["n"]
    scores["samples"] = [{"question": e.question, "answer": a} for e, a in list(zip(heldout, answers, strict=True))[:5]]
    scores["seconds"] = round(time.monotonic() - t0, 2)
    return scores


def run_gate(settings: Settings, registry: AdapterRegistry, candidate: AdapterVersion,
             current: AdapterVersion | None, dataset: Dataset, eval_config: dict[str, Any]) -> dict[str, Any]:
    """Evaluate ``candidate`` against ``current`` (None: the base model) on ``dataset.heldout`` (and a sample of
    ``dataset.train``); returns the report with ``promote``."""
    heldout = dataset.heldout
    # the corrections themselves: a candidate must reproduce them at least as well as the version it replaces
    trained = sorted(dataset.train, key=lambda e: e.id)[:int(eval_config.get("train_sample", TRAIN_SAMPLE))]
    report: dict[str, Any] = {"candidate": candidate.lora_name,
                              "baseline": current.lora_name if current else "base",
                              "tolerance": settings.finetune.tolerance, "heldout": len(heldout),
                              "trained_sample": len(trained)}
    pqa: list[Prompted] = []
    if eval_config.get("pubmedqa_path"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(settings.llm.model)
        pqa, report["pubmedqa"] = gate_prompts(settings, eval_config["pubmedqa_path"],
                                               int(eval_config.get("pubmedqa_limit", 50)), tok)
    if not heldout and not pqa:
        report.update(promote=False, reasons=["no held-out examples (too few distinct questions or "
                                              "heldout_fraction=0): not promoted automatically; promote by "
                                              "hand after checking the version"])
        return report

    async def serve_both(d: AdapterDeployer) -> str:
        await d.client.health()
        for v in (candidate, current):
            if v is not None:
                await d.ensure_loaded(v.lora_name, v.path, refresh=True)
        return d.client.base_url

    gen: Generator
    try:
        url = run_with_deployer(settings, registry, serve_both)
        gen = VllmGenerator(settings)
        cand_model = candidate.lora_name
        base_model = current.lora_name if current else served_base_name(settings.llm)
        report["backend"] = f"vllm at {url}"
    except PubmindError as e:
        log.warning("vLLM unreachable for the gate (%s): generating with transformers locally", e.message)
        gen = LocalGenerator(settings.llm.model, settings.llm.max_tokens)
        cand_model, base_model = candidate.path, (current.path if current else "base")
        report["backend"] = f"transformers+peft in the job process (vLLM not usable: {e.message})"
    report["candidate_metrics"] = _evaluate(gen, cand_model, heldout, pqa)
    report["baseline_metrics"] = _evaluate(gen, base_model, heldout, pqa)
    if trained:
        report["candidate_trained_metrics"] = _evaluate(gen, cand_model, trained, [])
        report["baseline_trained_metrics"] = _evaluate(gen, base_model, trained, [])
    promote, reasons = gate_decision(report["candidate_metrics"], report["baseline_metrics"],
                                     settings.finetune.tolerance)
    reasons = [f"held-out {r}" for r in reasons]
    if trained:
        ok, more = gate_decision(report["candidate_trained_metrics"], report["baseline_trained_metrics"],
                                 settings.finetune.tolerance)
        promote, reasons = promote and ok, reasons + [f"trained-on {r}" for r in more]
    report.update(promote=promote, reasons=reasons)
    return report
