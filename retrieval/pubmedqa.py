"""PubMedQA (``ori_pqal.json``) as a retrieval benchmark over a throwaway index.

Document (what is fair): the abstract as PubMed has it, i.e. CONTEXTS with LABELS as section labels plus
LONG_ANSWER as the CONCLUSIONS section, MESHES as MeSH, YEAR as year. The dataset has no titles (the
QUESTION plays that role), so the title is empty and NO question text goes into the document. Each
question's relevant document is its own PMID; ``--queries`` swaps in ``pmid<TAB>query`` rows.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pubmind.errors import BadSourceFile, InvalidInput
from pubmind.records import AbstractSection, Article, MeshHeading
from pubmind.settings import Settings
from retrieval.evaluation import evaluate
from retrieval.search import MODES, Searcher

EVAL_DEPTH = 100  # hits per query (MRR is MRR@100; recall/nDCG use the top 10)


def load_pubmedqa(path: str | Path) -> dict[int, dict[str, Any]]:
    """PMID -> raw record (QUESTION, CONTEXTS, LABELS, MESHES, YEAR, LONG_ANSWER, ...)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"--data {p}: file not found", param="data") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadSourceFile(str(p), f"not JSON: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise BadSourceFile(str(p), "expected a non-empty object keyed by PMID (ori_pqal.json)")
    out = {}
    for key, rec in raw.items():
        if not (key.isdigit() and isinstance(rec, dict) and isinstance(rec.get("CONTEXTS"), list)
                and isinstance(rec.get("QUESTION"), str)):
            raise BadSourceFile(str(p), f"entry {key!r} is not a PubMedQA record (PMID key, QUESTION, CONTEXTS)")
        out[int(key)] = rec
    return out


def to_article(pmid: int, rec: dict[str, Any]) -> Article:
    labels = rec.get("LABELS") or []
    secs = [AbstractSection(t, labels[i] if i < len(labels) else None) for i, t in enumerate(rec["CONTEXTS"])]
    if rec.get("LONG_ANSWER"):
        secs.append(AbstractSection(rec["LONG_ANSWER"], "CONCLUSIONS"))
    year = rec.get("YEAR")
    return Article(pmid=pmid, abstract=tuple(secs), year=int(str(year)) if str(year or "").isdigit() else None,
                   mesh=tuple(MeshHeading(m) for m in rec.get("MESHES") or ()), languages=("eng",))


def load_queries(path: str | Path, known: Iterable[int]) -> list[tuple[int, str]]:
    """(pmid, query) rows of a ``pmid<TAB>query`` TSV with a header row; PMIDs must be in the dataset."""
    p, known = Path(path), set(known)
    try:
        rows = list(csv.reader(p.open(newline="", encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError:
        raise InvalidInput(f"--queries {p}: file not found", param="queries") from None
    if not rows or [c.strip().lower() for c in rows[0]] != ["pmid", "query"]:
        raise BadSourceFile(str(p), f"first row must be the header 'pmid<TAB>query', got {rows[:1]!r}", line=1)
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip().isdigit() or not row[1].strip():
            raise BadSourceFile(str(p), f"expected 'pmid<TAB>query', got {row!r}", line=n)
        pmid = int(row[0])
        if pmid not in known:
            raise BadSourceFile(str(p), f"PMID {pmid} is not in the dataset", line=n)
        out.append((pmid, row[1].strip()))
    if not out:
        raise BadSourceFile(str(p), "no queries")
    return out


def build_index(settings: Settings, data: dict[int, dict[str, Any]], progress: bool = False) -> Any:
    """An Indexer over ``settings.home`` holding the dataset's articles (reused if already there)."""
    from retrieval.indexer import Indexer

    ix = Indexer(settings)
    try:
        ix.apply([to_article(p, r) for p, r in data.items()], progress=progress)
    except BaseException:
        ix.close()
        raise
    return ix


def run_queries(searcher: Searcher, queries: Sequence[tuple[int, str]], mode: str,
                depth: int = EVAL_DEPTH) -> dict[str, dict[str, float]]:
    """TREC-style run ``{qid: {pmid: score}}``; qid is the query's position."""
    qvecs = searcher.embedder.encode_queries([q for _, q in queries]) if mode != "lexical" else None
    run = {}
    for i, (_, q) in enumerate(queries):
        hits = searcher.search(q, k=depth, mode=mode, query_vector=None if qvecs is None else qvecs[i])
        # rank-preserving scores: hits are already in final order (rerank may not be monotone in score)
        run[str(i)] = {str(h.pmid): float(len(hits) - j) for j, h in enumerate(hits)}
    return run


def evaluate_retrieval(settings: Settings, data_path: str | Path, queries_path: str | Path | None = None,
                       modes: Sequence[str] = MODES, workdir: str | Path | None = None,
                       progress: bool = False) -> dict[str, dict[str, float]]:
    """``{mode: {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "queries", "ms_per_query"}}``.
    The index lives in ``workdir`` (kept, reused on the next run) or a temporary folder (deleted)."""
    for m in modes:
        if m not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {m!r}", param="mode")
    data = load_pubmedqa(data_path)
    queries = (load_queries(queries_path, data) if queries_path
               else [(p, r["QUESTION"]) for p, r in data.items()])
    qrels = {str(i): {str(p): 1} for i, (p, _) in enumerate(queries)}
    depth = min(EVAL_DEPTH, settings.retrieval.k_max)
    with tempfile.TemporaryDirectory(prefix="pubmind-eval-") as tmp:
        home = Path(workdir) if workdir else Path(tmp)
        s = settings.model_copy(update={"home": home.absolute()})
        ix = build_index(s, data, progress)
        try:
            from retrieval.search import load_reranker

            searcher = Searcher(s, ix.store, ix.index, ix.embedder, load_reranker(s))
            out = {}
            for mode in modes:
                t0 = time.perf_counter()
                run = run_queries(searcher, queries, mode, depth)
                ms = (time.perf_counter() - t0) * 1000 / len(queries)
                out[mode] = {**evaluate(run, qrels, (1, 5, 10)), "ms_per_query": round(ms, 2)}
            return out
        finally:
            ix.close()
