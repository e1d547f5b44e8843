"""Training data from curator corrections, in exactly the serving prompt format.

Each accepted correction becomes one chat example built with ``generation.prompt`` (the code path the server
answers with): system prompt, evidence rendered with ``render_evidence`` under the serving token budget
(``settings.retrieval.context_tokens``), the question, and the corrected answer as the assistant turn.
Evidence is RAFT-style: the articles the curator cited (their PMIDs and the answer's citations) plus
``settings.finetune.distractors`` retrieved articles that are not cited, in retrieval-rank order (cited
articles the retriever missed are inserted at hash-determined positions, so "the first passage is the
answer" is never learnable).

Duplicates (same normalised question) keep the most recent correction. The held-out split is by question
hash (deterministic, independent of order and of the other questions). The dataset is written as jsonl and
named by the SHA-256 of its content (``content_hash``), so a re-tune on the same corrections is recognisably
the same data.
Loss is on answer tokens only: ``tokenize_example`` sets labels to -100 on the prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import msgspec

from finetune.store import Correction
from generation.citations import cited_pmids
from generation.prompt import build_messages, evidence_room, render_evidence
from pubmind.errors import InvalidInput, ServiceUnavailable
from pubmind.records import Article
from pubmind.settings import Settings
from retrieval.hydrate import Hit
from retrieval.store import CorpusStore

IGNORE_INDEX = -100
MAX_ANSWER_CHARS = 8000
MAX_NOTE_CHARS = 2000
MAX_PMIDS = 50
RATING_RANGE = (1, 5)


class EvidenceItem(Protocol):  # a retrieval.search.Hit or a pubmind.records.Article
    pmid: int


Retriever = Callable[[str, int], Sequence[Hit]]  # (question, k) -> hits in rank order


class CorpusLike(Protocol):
    def get_many(self, pmids: Iterable[int]) -> dict[int, Article]: ...


class Example(msgspec.Struct, kw_only=True):
    id: str  # sha256 of the normalised question, first 16 hex digits
    feedback_id: str
    split: str  # "train" | "heldout"
    question: str
    target: str  # the corrected answer (assistant turn)
    prompt_messages: list[dict[str, str]]  # system + user (evidence + question), as served
    evidence_pmids: list[int]  # rendered into the prompt, in order
    cited_pmids: list[int]  # the curator's PMIDs and the answer's citations: what a good answer cites


class Dataset(msgspec.Struct, kw_only=True):
    hash: str  # content_hash(examples): SHA-256 of the training content
    examples: list[Example]
    duplicates_removed: int
    skipped: list[dict[str, str]]  # [{"feedback_id", "reason"}]: corrections that could not become examples
    path: str | None = None

    @property
    def train(self) -> list[Example]:
        return [e for e in self.examples if e.split == "train"]

    @property
    def heldout(self) -> list[Example]:
        return [e for e in self.examples if e.split == "heldout"]

    def summary(self) -> dict[str, Any]:
        return {"hash": self.hash, "train": len(self.train), "heldout": len(self.heldout),
                "duplicates_removed": self.duplicates_removed, "skipped": self.skipped, "path": self.path}


# ---- validation -------------------------------------------------------------------------------------
def validate_correction(
    corpus: CorpusLike,
    *,
    question: object,  # untrusted (a request body or an import line): checked here
    corrected_answer: object,
    pmids: object,
    rating: object = None,
    note: object = "",
    max_question_chars: int,
) -> tuple[str, str, list[int]]:
    """Check a correction before it is stored; InvalidInput names the field and the bad value.

    Returns (question, corrected_answer, pmids) stripped. Every PMID in ``pmids`` and every PMID the answer
    cites must exist in the corpus store (an answer citing nothing, e.g. the "insufficient evidence" reply,
    is allowed)."""
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput(f"question must be a non-empty string, got {question!r:.100}", param="question")
    if len(question) > max_question_chars:
        raise InvalidInput(f"question is {len(question)} characters, the limit is {max_question_chars}",
                           param="question")
    if not isinstance(corrected_answer, str) or not corrected_answer.strip():
        raise InvalidInput(f"corrected_answer must be a non-empty string, got {corrected_answer!r:.100}",
                           param="corrected_answer")
    if len(corrected_answer) > MAX_ANSWER_CHARS:
        raise InvalidInput(f"corrected_answer is {len(corrected_answer)} characters, the limit is "
                           f"{MAX_ANSWER_CHARS}", param="corrected_answer")
    if pmids is None:
        pmids = []
    if not isinstance(pmids, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pmids):
        raise InvalidInput(f"pmids must be a list of integers, got {pmids!r:.200}", param="pmids")
    if len(pmids) > MAX_PMIDS:
        raise InvalidInput(f"pmids has {len(pmids)} entries, the limit is {MAX_PMIDS}", param="pmids")
    if bad := [p for p in pmids if p <= 0]:
        raise InvalidInput(f"pmids must be positive, got {bad}", param="pmids")
    if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool)
                               or not RATING_RANGE[0] <= rating <= RATING_RANGE[1]):
        raise InvalidInput(f"rating must be an integer from {RATING_RANGE[0]} to {RATING_RANGE[1]} or null, "
                           f"got {rating!r}", param="rating")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise InvalidInput(f"note must be a string of at most {MAX_NOTE_CHARS} characters, got {note!r:.100}",
                           param="note")
    cited = cited_pmids(corrected_answer)
    known = corpus.get_many(list(dict.fromkeys([*pmids, *cited])))
    if missing := [p for p in pmids if p not in known]:
        raise InvalidInput(f"pmids not in the corpus: {missing}", param="pmids")
    if missing := [p for p in cited if p not in known]:
        raise InvalidInput(f"corrected_answer cites PMIDs not in the corpus: {missing}", param="corrected_answer")
    return question.strip(), corrected_answer.strip(), list(dict.fromkeys(pmids))


# ---- building -----------------------------------------------------------------------------------------
_WS = re.compile(r"\s+")


def normalize_question(q: str) -> str:
    return _WS.sub(" ", q.strip().lower())


def question_id(question: str) -> str:
    return hashlib.sha256(normalize_question(question).encode()).hexdigest()[:16]


def split_of(question: str, heldout_fraction: float, seed: int) -> tuple[str, float]:
    """("train"|"heldout", u) with u in [0, 1) a hash of (seed, normalised question): same answer every run."""
    h = hashlib.sha256(f"{seed}\x00{normalize_question(question)}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return ("heldout" if u < heldout_fraction else "train"), u


def assign_splits(questions: Sequence[str], heldout_fraction: float, seed: int) -> list[str]:
    """Hash split (``split_of``), bounded for small sets: with >= 2 questions and a positive fraction, between
    1 and ceil(fraction * n) questions are held out (the lowest hashes win), so the gate always has something
    to compare on and a handful of corrections is not mostly held out by chance."""
    if not questions:
        return []
    splits, us = zip(*(split_of(q, heldout_fraction, seed) for q in questions), strict=True)
    out = list(splits)
    if len(out) >= 2 and heldout_fraction > 0:
        upper = max(1, math.ceil(heldout_fraction * len(out)))
        by_hash = sorted(range(len(out)), key=us.__getitem__)
        held = [i for i in by_hash if out[i] == "heldout"]
        for i in held[upper:]:
            out[i] = "train"
        if not held:
            out[by_hash[0]] = "heldout"
    return out


def _evidence_order(question: str, hits: Sequence[Hit], cited: Sequence[int], missing: Sequence[Article],
                    distractors: int) -> list[Hit | Article]:
    """Cited hits and the first ``distractors`` non-cited hits in rank order; cited articles the retriever
    missed inserted at positions chosen by a hash of the question."""
    cited_set = set(cited)
    out: list[Hit | Article] = []
    n_distractors = 0
    for h in hits:
        if h.pmid in cited_set:
            out.append(h)
        elif n_distractors < distractors:
            out.append(h)
            n_distractors += 1
    for a in missing:
        pos = int(hashlib.sha256(f"{question}\x00{a.pmid}".encode()).hexdigest(), 16) % (len(out) + 1)
        out.insert(pos, a)
    return out


def evidence_budget(settings: Settings, tokenizer: Any, question: str) -> int:
    """The evidence token budget the server uses for ``question`` (no history; ``generation.prompt.evidence_room``)."""
    budget, _ = evidence_room(tokenizer, question, None, max_model_len=settings.llm.context_len,
                              max_tokens=settings.llm.max_tokens, context_tokens=settings.retrieval.context_tokens)
    return max(1, budget)


def build_dataset(
    feedback: Sequence[Correction],
    *,
    corpus: CorpusLike,
    retrieve: Retriever,
    tokenizer: Any,
    settings: Settings,
) -> Dataset:
    """Examples from accepted corrections (``finetune.store.Correction``), split and hashed (not yet written).

    A correction whose cited articles are no longer in the corpus, or whose cited passages do not fit the
    evidence budget even without distractors, is listed in ``skipped`` with the reason (never dropped
    silently)."""
    ft = settings.finetune
    latest: dict[str, Any] = {}
    for fb in sorted(feedback, key=lambda f: (f.created_at, f.id)):
        latest[normalize_question(fb.question)] = fb  # a later correction of the same question wins
    duplicates = len(feedback) - len(latest)
    chosen = sorted(latest.values(), key=lambda f: question_id(f.question))
    splits = assign_splits([f.question for f in chosen], ft.heldout_fraction, ft.seed)

    examples, skipped = [], []
    for fb, split in zip(chosen, splits, strict=True):
        cited = list(dict.fromkeys([*fb.pmids, *cited_pmids(fb.corrected_answer)]))
        hits = list(retrieve(fb.question, len(cited) + ft.distractors + 5))
        retrieved = {h.pmid for h in hits}
        not_retrieved = [p for p in cited if p not in retrieved]
        articles = corpus.get_many(not_retrieved) if not_retrieved else {}
        if gone := [p for p in not_retrieved if p not in articles]:
            skipped.append({"feedback_id": fb.id, "reason": f"cited PMIDs no longer in the corpus: {gone}"})
            continue
        missing = [articles[p] for p in not_retrieved]
        budget = evidence_budget(settings, tokenizer, fb.question)
        for n_distractors in range(ft.distractors, -1, -1):
            items = _evidence_order(fb.question, hits, cited, missing, n_distractors)
            text, used = render_evidence(items, tokenizer, budget)
            if set(cited) <= set(used):
                break
        else:
            skipped.append({"feedback_id": fb.id, "reason": f"cited passages {cited} do not fit the evidence "
                            f"budget of {budget} tokens (retrieval.context_tokens={settings.retrieval.context_tokens})"})
            continue
        examples.append(Example(
            id=question_id(fb.question), feedback_id=fb.id, split=split, question=fb.question,
            target=fb.corrected_answer, prompt_messages=build_messages(fb.question, text),
            evidence_pmids=used, cited_pmids=cited,
        ))
    return Dataset(hash=content_hash(examples), examples=examples, duplicates_removed=duplicates,
                   skipped=skipped)


def _jsonl(examples: Sequence[Example]) -> bytes:
    return b"".join(msgspec.json.encode(e) + b"\n" for e in examples)


def content_hash(examples: Sequence[Example]) -> str:
    """SHA-256 of what is trained and evaluated on (every field but ``feedback_id``, which is provenance):
    the same corrections give the same hash whoever entered them and when."""
    h = hashlib.sha256()
    for e in examples:
        h.update(msgspec.json.encode({k: v for k, v in msgspec.structs.asdict(e).items() if k != "feedback_id"}))
        h.update(b"\n")
    return h.hexdigest()


def write_dataset(ds: Dataset, out_dir: str | Path) -> Path:
    """Write ``dataset-<hash12>.jsonl`` (one Example per line) and ``dataset.json`` (summary, full hash)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dataset-{ds.hash[:12]}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(_jsonl(ds.examples))
    tmp.replace(path)
    ds.path = str(path)
    (out / "dataset.json").write_text(json.dumps(ds.summary(), indent=2))
    return path


def read_dataset(path: str | Path) -> Dataset:
    """Load a written dataset and check its content hash against its name."""
    p = Path(path)
    examples = [msgspec.json.decode(line, type=Example) for line in p.read_bytes().splitlines() if line.strip()]
    digest = content_hash(examples)
    if not p.name.startswith(f"dataset-{digest[:12]}"):
        raise InvalidInput(f"dataset file {p} does not match its content hash (sha256 {digest[:12]}...): "
                           "it was modified after it was written", param="dataset")
    summary_path = p.parent / "dataset.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return Dataset(hash=digest, examples=examples, duplicates_removed=summary.get("duplicates_removed", 0),
                   skipped=summary.get("skipped", []), path=str(p))


# ---- tokenisation (loss on the answer only) -----------------------------------------------------------
def prompt_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The serving prompt: the chat template with the generation prompt, as vLLM renders it."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def tokenize_example(tokenizer: Any, ex: Example, max_seq_len: int) -> dict[str, list[int]] | None:
    """``input_ids`` = serving prompt tokens + answer tokens (with the template's end-of-turn), ``labels`` =
    -100 on the prompt, the answer tokens elsewhere. None if longer than ``max_seq_len``."""
    prompt = prompt_text(tokenizer, ex.prompt_messages)
    full = tokenizer.apply_chat_template([*ex.prompt_messages, {"role": "assistant", "content": ex.target}],
                                         tokenize=False)
    if not full.startswith(prompt):
        raise InvalidInput("the tokenizer's chat template renders the assistant turn in a way that does not "
                           "extend the generation prompt; cannot mask the prompt", param="chat_template")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids
    if len(ids) > max_seq_len:
        return None
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


@contextmanager
def make_retriever(settings: Settings) -> Iterator[tuple[CorpusStore, Retriever]]:
    """(corpus store, retriever) over the corpus and vector index in ``settings.home``, read-only: the
    Searcher serving uses (``retrieval.search.Searcher.open``), in ``settings.retrieval.mode``.
    ServiceUnavailable if there is no corpus/index yet."""
    from retrieval.index import disk_generation
    from retrieval.search import Searcher

    if disk_generation(settings.index_dir) is None:
        raise ServiceUnavailable(f"no vector index at {settings.index_dir}: ingest articles before re-tuning "
                                 "(distractors are retrieved from it)")
    searcher = Searcher.open(settings)
    try:
        def retrieve(question: str, k: int) -> Sequence[Hit]:
            return searcher.search(question, k=min(k, settings.retrieval.k_max), mode=settings.retrieval.mode)

        yield searcher.store, retrieve
    finally:
        searcher.store.close()
