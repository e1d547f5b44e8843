"""Retrieval benchmark: vector-index recall/latency/size, and end-to-end search latency.

1. Vector index (``retrieval.index.VectorIndex``) on synthetic 384-d unit vectors with cluster structure
   (cluster centres + a low-rank within-cluster spread + isotropic noise, like sentence embeddings):
   build time, single-query latency p50/p95, recall@10 against exact search, bytes per vector in RAM and
   on disk, for flat (exact), HNSW and IVF-PQ at each size.
2. End-to-end ``Searcher.search`` latency (single query, MiniLM query embedding included) per mode over a
   real CorpusStore (FTS5) of synthetic chunks whose words follow PubMedQA's word frequencies, with the
   synthetic vectors as their embeddings (quality is meaningless there; cost is what is measured).

    .venv/bin/python bench/retrieval.py --quick      # 100k vectors only (~3-5 min on 2 cores)
    .venv/bin/python bench/retrieval.py              # 100k and 1M (HNSW at 1M skipped unless --hnsw-1m)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pubmind.records import AbstractSection, Article  # noqa: E402
from pubmind.settings import Settings, load_settings  # noqa: E402
from retrieval.chunking import Chunk, make_chunk_id  # noqa: E402
from retrieval.index import VectorIndex  # noqa: E402

DIM = 384
PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa" / "data" / "ori_pqal.json"


def synthetic(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 384) base and (n_queries, 384) query float32 unit vectors. Base: a shared mean direction +
    Zipf-sized cluster centres + a 32-d low-rank within-cluster spread + isotropic noise; each query is a
    noisy copy of a base vector. Calibrated on MiniLM over PubMedQA (real: query top-1 cosine 0.77,
    10th 0.45; this at 5k vectors: 0.78, 0.39)."""
    rng = np.random.default_rng(seed)
    n_clusters = max(64, int(np.sqrt(n)))
    g = rng.standard_normal(DIM).astype(np.float32)
    g /= np.linalg.norm(g)
    centres = rng.standard_normal((n_clusters, DIM)).astype(np.float32) / np.sqrt(DIM)
    basis = rng.standard_normal((32, DIM)).astype(np.float32) / np.sqrt(DIM)
    p = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    p /= p.sum()
    base = np.empty((n, DIM), np.float32)
    for i in range(0, n, 100_000):
        b = min(100_000, n - i)
        c = rng.choice(n_clusters, size=b, p=p)
        x = 0.3 * g + centres[c] + rng.standard_normal((b, 32)).astype(np.float32) @ basis * 0.8
        x += 0.5 * rng.standard_normal((b, DIM)).astype(np.float32) / np.sqrt(DIM)
        base[i:i + b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = base[rng.choice(n, size=n_queries)] + 0.8 * rng.standard_normal((n_queries, DIM)).astype(np.float32) / np.sqrt(DIM)
    return base, q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_topk(base: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """(nq, k) indices of the exact inner-product top-k (blocked over the base)."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for i in range(0, len(base), 200_000):
        s = q @ base[i:i + 200_000].T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        best_i = np.concatenate([best_i, top + i], 1)
        keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(xs, p)), 2)


def settings_for(home: Path, kind: str, n: int) -> Settings:
    return load_settings(home=str(home), index={"kind": kind, "train_min": min(100_000, n), "save_every": 10**9})


FP = {"model": "synthetic", "dim": DIM, "normalize": True, "max_seq_length": 256, "query_prefix": "",
      "passage_prefix": ""}


def bench_index(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, workdir: Path,
                threads: int, k: int = 10) -> tuple[dict[str, Any], VectorIndex]:
    """Build a VectorIndex of ``kind`` holding ``base`` (chunk id = row; all cores), then time single
    queries (``threads`` FAISS threads)."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    folder = workdir / f"index-{kind}-{len(base)}"
    s = settings_for(workdir, kind, len(base))
    ix = VectorIndex.open(folder, s, FP)
    t0 = time.perf_counter()
    for i in range(0, len(base), 100_000):
        ix.add(np.arange(i, min(i + 100_000, len(base)), dtype=np.int64), base[i:i + 100_000])
    ix.save()
    build = time.perf_counter() - t0
    faiss.omp_set_num_threads(threads)
    lat, found, lat_c, found_c = [], [], [], []
    for qi in range(len(queries)):
        t = time.perf_counter()
        _, ids = ix.search(queries[qi:qi + 1], k)
        lat.append((time.perf_counter() - t) * 1000)
        found.append(len(set(ids[0].tolist()) & set(truth[qi].tolist())) / k)
        # as the Searcher asks: retrieval.candidates (100) chunks, of which the top k are kept
        t = time.perf_counter()
        _, ids = ix.search(queries[qi:qi + 1], s.retrieval.candidates)
        lat_c.append((time.perf_counter() - t) * 1000)
        found_c.append(len(set(ids[0, :k].tolist()) & set(truth[qi].tolist())) / k)
    sweep = []
    if kind == "ivfpq":  # cells visited per query: the recall/latency knob
        for nprobe in (64, 128, 256):
            s.index.ivf_nprobe = nprobe
            lat_p, found_p = [], []
            for qi in range(len(queries)):
                t = time.perf_counter()
                _, ids = ix.search(queries[qi:qi + 1], s.retrieval.candidates)
                lat_p.append((time.perf_counter() - t) * 1000)
                found_p.append(len(set(ids[0, :k].tolist()) & set(truth[qi].tolist())) / k)
            sweep.append({"nprobe": nprobe, "p50_ms_candidates": pct(lat_p, 50),
                          "recall@10_via_candidates": round(float(np.mean(found_p)), 4)})
        s.index.ivf_nprobe = settings_for(workdir, kind, len(base)).index.ivf_nprobe
    disk = {p.name: p.stat().st_size for p in folder.iterdir()}
    index_file = next(v for name, v in disk.items() if name.startswith("index."))
    vec_file = sum(v for name, v in disk.items() if name.startswith("vectors."))
    # RAM: the FAISS index + the id maps (slot->id int64, alive bool, sorted lookup ids+slots 2x int64)
    ram = index_file + len(base) * (8 + 1 + 16)
    info = ix.info()
    res = {"kind": kind, "n": len(base), "build_s": round(build, 1), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
           "recall@10": round(float(np.mean(found)), 4),
           "candidates": s.retrieval.candidates, "p50_ms_candidates": pct(lat_c, 50),
           "recall@10_via_candidates": round(float(np.mean(found_c)), 4), "ram_bytes_per_vector": round(ram / len(base), 1),
           "disk_bytes_per_vector": round(sum(disk.values()) / len(base), 1),
           "refine_file_bytes_per_vector": round(vec_file / len(base), 1), "nlist": info["nlist"],
           "params": _params(s, kind)}
    if sweep:
        res["nprobe_sweep"] = sweep
    return res, ix


def _params(s: Settings, kind: str) -> dict[str, Any]:
    i = s.index
    if kind == "hnsw":
        return {"M": i.hnsw_m, "ef_construction": i.hnsw_ef_construction, "ef_search": i.hnsw_ef_search}
    if kind == "ivfpq":
        return {"nprobe": i.ivf_nprobe, "pq_m": i.pq_m, "refine": i.pq_refine}
    return {}


# ---- end-to-end -----------------------------------------------------------------------------------
class OneChunk:
    """Chunker stand-in: the abstract is the chunk (no tokenizer pass over 100k texts)."""

    def chunk_many(self, articles: list[Article]) -> list[list[Chunk]]:
        return [[Chunk(make_chunk_id(a.pmid, 0), a.pmid, 0, a.abstract[0].text)] for a in articles]


def word_model() -> tuple[list[str], np.ndarray, list[str]]:
    """PubMedQA's words and their frequencies, and its questions (realistic queries)."""
    import re

    data = json.loads(PUBMEDQA.read_text())
    cnt = Counter(w for r in data.values() for c in [*r["CONTEXTS"], r["LONG_ANSWER"]]
                  for w in re.findall(r"[A-Za-z][A-Za-z0-9-]+", c.lower()))
    words = list(cnt)
    f = np.array([cnt[w] for w in words], np.float64)
    return words, f / f.sum(), [r["QUESTION"] for r in data.values()]


def bench_search(n: int, base: np.ndarray, index: VectorIndex, workdir: Path, n_queries: int) -> dict[str, Any]:
    from retrieval.embed import Embedder
    from retrieval.search import Searcher
    from retrieval.store import CorpusStore

    words, p, questions = word_model()
    rng = np.random.default_rng(3)
    s = index.settings
    path = workdir / f"corpus-{n}.sqlite"
    fresh = not path.exists()  # built once per size, shared by the index kinds
    store = CorpusStore(path)
    t0 = time.perf_counter()
    batch = 20_000
    for i in range(0, n if fresh else 0, batch):
        m = min(batch, n - i)
        toks = rng.choice(len(words), size=(m, 180), p=p)  # ~180 words per chunk (~256 tokens)
        arts = [Article(pmid=j + 1, title="", year=1990 + j % 35, journal=f"Journal {j % 500}",
                        abstract=(AbstractSection(" ".join(words[t] for t in row)),))
                for j, row in zip(range(i, i + m), toks, strict=True)]
        store.apply(arts, OneChunk())
    store_s = time.perf_counter() - t0
    # the index holds chunk ids pmid*1000 (= row+1)*1000: re-key the benchmark index
    keyed = VectorIndex.open(workdir / f"keyed-{index.kind}-{n}", s, FP)
    for i in range(0, n, 100_000):
        rows = np.arange(i, min(i + 100_000, n))
        keyed.add((rows + 1) * 1000, base[rows])
    emb = Embedder(load_settings().embedding)
    searcher = Searcher(s, store, keyed, emb)
    qs = [questions[i] for i in rng.choice(len(questions), size=n_queries, replace=False)]
    searcher.search(qs[0], k=10)  # warm-up (first torch call is slow)
    out: dict[str, Any] = {"n_chunks": n, "index": index.kind, "store_build_s": round(store_s, 1)}
    for mode in ("dense", "lexical", "hybrid"):
        lat = []
        for q in qs:
            t = time.perf_counter()
            searcher.search(q, k=10, mode=mode)
            lat.append((time.perf_counter() - t) * 1000)
        out[mode] = {"p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95)}
    enc = []
    for q in qs:
        t = time.perf_counter()
        emb.encode_queries([q])
        enc.append((time.perf_counter() - t) * 1000)
    out["query_embedding"] = {"p50_ms": pct(enc, 50), "p95_ms": pct(enc, 95)}
    store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k vectors only, fewer queries.")
    ap.add_argument("--sizes", default=None, help="Comma-separated vector counts (default 100000,1000000).")
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--hnsw-1m", action="store_true", help="Also build HNSW at 1M (slow on 2 cores).")
    ap.add_argument("--queries", type=int, default=None, help="Queries per measurement (default 200, quick 100).")
    ap.add_argument("--search-kinds", default="flat,hnsw", help="Index kinds for the end-to-end search bench.")
    ap.add_argument("--threads", type=int, default=1,
                    help="FAISS/torch threads for queries (default 1: one query per core, as a server runs them).")
    ap.add_argument("--json", type=Path, default=None, help="Also write results here.")
    a = ap.parse_args()
    import faiss
    import torch

    faiss.omp_set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else ([100_000] if a.quick else [100_000, 1_000_000])
    nq = a.queries or (100 if a.quick else 200)
    kinds = a.kinds.split(",")
    results: dict[str, Any] = {"index": [], "search": []}
    with tempfile.TemporaryDirectory(prefix="pubmind-bench-") as tmp:
        work = Path(tmp)
        for n in sizes:
            t = time.perf_counter()
            base, queries = synthetic(n, nq)
            truth = exact_topk(base, queries, 10)
            print(f"# n={n}: data + exact ground truth in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            for kind in kinds:
                if kind == "hnsw" and n > 200_000 and not a.hnsw_1m:
                    continue
                r, ix = bench_index(kind, base, queries, truth, work, a.threads)
                print(json.dumps(r), flush=True)
                results["index"].append(r)
                if n <= 100_000 and kind in a.search_kinds.split(","):
                    r = bench_search(n, base, ix, work, nq)
                    print(json.dumps(r), flush=True)
                    results["search"].append(r)
                del ix
            del base
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
