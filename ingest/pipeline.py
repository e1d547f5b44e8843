"""Ingest pipeline: files (or directories of files) and PubMed queries -> ``retrieval.indexer.Indexer``.

A file is all-or-nothing for parse errors: it is parsed completely into a spool file under
``<home>/ingest/`` (msgspec JSON lines, constant memory) and only a file that parsed cleanly is applied
to the store, so a truncated/malformed file never leaves half its records behind. After the apply the
file is recorded (path + md5) in the store's bookkeeping; an unchanged file is skipped next time, a
crash between apply and bookkeeping just re-applies it (upserts are idempotent). In a run over many
files, bad files are collected and reported at the end; the good ones are ingested.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from tqdm import tqdm

from ingest.eutils import EutilsClient
from ingest.parse import is_source_file, iter_records, verify_md5
from pubmind.errors import BadSourceFile
from pubmind.records import Article, Deletion, article_from_json, article_to_json
from pubmind.settings import Settings

Record = Article | Deletion
_int_tuple = msgspec.json.Decoder(tuple[int, ...])


@dataclass
class FileResult:
    path: str
    status: str  # "ingested" | "skipped" (unchanged, already ingested) | "failed"
    md5: str | None = None
    articles: int = 0
    deletions: int = 0
    error: str | None = None
    apply: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    sync: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    def summary(self) -> dict[str, Any]:
        by = {s: sum(1 for f in self.files if f.status == s) for s in ("ingested", "skipped", "failed")}
        return {"files": by, "articles": sum(f.articles for f in self.files),
                "deletions": sum(f.deletions for f in self.files), "sync": self.sync,
                "seconds": round(self.seconds, 2),
                "failed": [{"path": f.path, "error": f.error} for f in self.failed]}


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded recursively to their PubMed files (sorted, so baseline
    files precede update files and numbered files apply in order). Unsupported explicit files and
    missing paths raise ``BadSourceFile``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_source_file(f))
        elif p.is_file():
            if not is_source_file(p):
                raise BadSourceFile(str(p), "unsupported file type (expected .xml, .xml.gz, .txt or .nbib)")
            out.append(p)
        else:
            raise BadSourceFile(str(p), "no such file or directory")
    unique: dict[Path, Path] = {}  # resolved -> as given, first occurrence wins
    for f in out:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def spool_records(records: Iterable[Record], spool: Path) -> tuple[int, int]:
    """Write records as JSON lines ('A' article / 'D' deletion); returns (articles, deleted PMIDs)."""
    n_art = n_del = 0
    enc = msgspec.json.Encoder()
    with open(spool, "wb") as f:
        for r in records:
            if isinstance(r, Article):
                f.write(b"A" + article_to_json(r) + b"\n")
                n_art += 1
            else:
                f.write(b"D" + enc.encode(r.pmids) + b"\n")
                n_del += len(r.pmids)
    return n_art, n_del


def read_spool(spool: Path) -> Iterator[Record]:
    with open(spool, "rb") as f:
        for line in f:
            kind, body = line[:1], line[1:-1]
            yield article_from_json(body) if kind == b"A" else Deletion(pmids=_int_tuple.decode(body))


class Pipeline:
    """Owns one ``Indexer`` (the single writer); use as a context manager or call ``close()``."""

    def __init__(self, settings: Settings, indexer: Any | None = None, *, progress: bool = True) -> None:
        self.settings = settings
        self.progress = progress
        self._indexer = indexer
        self._own = indexer is None

    @property
    def indexer(self) -> Any:
        if self._indexer is None:
            from retrieval.indexer import Indexer

            self._indexer = Indexer(self.settings)
        return self._indexer

    def close(self) -> None:
        if self._own and self._indexer is not None:
            self._indexer.close()
            self._indexer = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- files
    def ingest_files(self, paths: Iterable[str | Path], *, force: bool = False, sync: bool = True) -> IngestReport:
        t0 = time.perf_counter()
        report = IngestReport()
        files = discover(paths)
        pending, synced = 0, []
        with tqdm(files, desc="files", unit="file", disable=not self.progress or len(files) < 2) as bar:
            for path in bar:
                bar.set_postfix_str(path.name)
                res = self.ingest_file(path, force=force, sync=False)
                report.files.append(res)
                pending += res.apply.get("chunks_added", 0) + res.apply.get("chunks_removed", 0)
                if sync and pending >= self.settings.index.save_every:  # embed as we go on long runs
                    synced.append(self.indexer.sync(progress=self.progress))
                    pending = 0
        if sync:  # a no-op when nothing is pending
            synced.append(self.indexer.sync(progress=self.progress))
        if synced:
            report.sync = msgspec.to_builtins(_sum(synced))
        report.seconds = time.perf_counter() - t0
        return report

    def ingest_file(self, path: str | Path, *, force: bool = False, sync: bool = True) -> FileResult:
        """Parse ``path`` completely, then apply it. Returns ``failed`` (with the error) for a bad file
        (nothing of it is applied); other errors (store, embedder) propagate."""
        path = Path(path)
        key = str(path.resolve())
        try:
            md5 = verify_md5(path)
        except BadSourceFile as e:
            return FileResult(key, "failed", error=e.message)
        store = self.indexer.store
        if not force and store.file_done(key, md5):
            return FileResult(key, "skipped", md5=md5)
        spool_dir = self.settings.ingest_dir
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="spool-", suffix=".jsonl", dir=spool_dir)
        os.close(fd)
        spool = Path(tmp)
        try:
            try:
                recs = iter_records(path, check_md5=False)  # checked above
                if self.progress:
                    recs = tqdm(recs, desc=f"parse {path.name}", unit="rec", leave=False)
                n_art, n_del = spool_records(recs, spool)
            except BadSourceFile as e:
                return FileResult(key, "failed", md5=md5, error=e.message)
            stats = self.indexer.apply(read_spool(spool), progress=self.progress, sync=sync)
        finally:
            spool.unlink(missing_ok=True)
        counts = {"articles": n_art, "deletions": n_del, **stats.apply.to_dict()}
        store.mark_file(key, md5, counts)
        return FileResult(key, "ingested", md5=md5, articles=n_art, deletions=n_del, apply=stats.apply.to_dict())

    # ---------------------------------------------------------------------------------------- PubMed
    def ingest_query(self, query: str, *, mindate: str | None = None, maxdate: str | None = None,
                     max_records: int | None = None, client: EutilsClient | None = None) -> dict[str, Any]:
        """Fetch ``query``'s records from E-utilities and apply them batch by batch (resumable: progress
        is saved after each applied batch), then embed."""
        t0 = time.perf_counter()
        client = client or EutilsClient(self.settings)
        indexer = self.indexer  # open (lock + store) before the first request
        totals: dict[str, int] = {}
        n_art = n_del = pending = 0
        synced: list[Any] = []
        with tqdm(desc="fetch", unit="rec", disable=not self.progress) as bar:
            def on_progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            for batch in client.iter_query(query, mindate=mindate, maxdate=maxdate, max_records=max_records,
                                           state_dir=self.settings.ingest_dir, progress=on_progress):
                stats = indexer.apply(batch, progress=False, sync=False)
                for k, v in stats.apply.to_dict().items():
                    totals[k] = totals.get(k, 0) + v
                n_art += sum(1 for r in batch if isinstance(r, Article))
                n_del += sum(len(r.pmids) for r in batch if isinstance(r, Deletion))
                pending += stats.apply.chunks_added + stats.apply.chunks_removed
                if pending >= self.settings.index.save_every:  # embed as we go on long runs
                    synced.append(indexer.sync(progress=self.progress))
                    pending = 0
        synced.append(indexer.sync(progress=self.progress))
        sync = msgspec.to_builtins(_sum(synced))
        return {"query": query, "articles": n_art, "deletions": n_del, "apply": totals, "sync": sync,
                "requests": client.requests, "seconds": round(time.perf_counter() - t0, 2)}


def _sum(stats: list[Any]) -> Any:
    total = stats[0]
    for s in stats[1:]:
        total += s
    return total


def run_files(settings: Settings, paths: Iterable[str | Path], *, force: bool = False,
              progress: bool = True) -> IngestReport:
    with Pipeline(settings, progress=progress) as p:
        return p.ingest_files(paths, force=force)

