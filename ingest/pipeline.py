"""Ingest pipeline: files (or directories of files) and PubMed queries -> ``retrieval.indexer.Indexer``.

A file is all-or-nothing for parse errors: it is parsed completely into a spool file under
``<home>/ingest/`` (msgspec JSON lines, constant memory) and only a file that parsed cleanly is applied
to the store, so a truncated/malformed file never leaves half its records behind. After the apply the
file is recorded (path + md5) in the store's bookkeeping; an unchanged file is skipped next time, a
crash between apply and bookkeeping just re-applies it (upserts are idempotent). In a run over many
files, bad files are collected and reported at the end; the good ones are ingested.

Several files are parsed and chunked in parallel (``ingest.workers`` processes, one file each, at most
2 files per worker in flight): a worker writes the file's spool with each article's chunks; the single
writer applies the spools in file order, exactly as the one-process path would, so the store, the index
and the crash-safety guarantees are the same. With ``ingest.executor = "ray"`` each file is parsed and
chunked by a Ray task instead (on any machine of the cluster): the writer sends the file's bytes, the task
returns the spool's lines gzip-compressed, and the writer spools and applies them in the same order.
"""

from __future__ import annotations

import gzip
import io
import logging
import multiprocessing as mp
import os
import pickle
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import msgspec
from tqdm import tqdm

from ingest.eutils import EutilsClient
from ingest.malloc import SYSTEM as SYSTEM_MALLOC
from ingest.malloc import in_use, workers_malloc
from ingest.malloc import resolve as resolve_malloc
from ingest.parse import is_source_file, iter_records, verify_md5
from pubmind.errors import BadSourceFile, ConfigError, WorkerFailed
from pubmind.records import Article, Deletion, article_from_json, article_to_json
from pubmind.settings import Settings
from retrieval.chunking import Chunk, Chunker
from retrieval.distributed import ray_init

log = logging.getLogger("pubmind.ingest")
Record = Article | Deletion
ParseResult = tuple[int, int, str | None]  # articles, deleted PMIDs, error message of a bad file
_int_tuple = msgspec.json.Decoder(tuple[int, ...])
_chunks_enc, _chunks_dec = msgspec.json.Encoder(), msgspec.json.Decoder(list[Chunk])
CHUNK_BATCH = 256  # articles per chunk_many() call in a parse worker


@dataclass
class FileResult:
    path: str
    status: str  # "ingested" | "skipped" (unchanged, already ingested) | "failed"
    md5: str | None = None
    articles: int = 0
    deletions: int = 0
    error: str | None = None
    apply: dict[str, Any] = field(default_factory=dict)
    parsed_by: str | None = None  # "writer" | "process" | "ray" (a Ray task); None: not parsed (skipped)


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    sync: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    parse_workers: str = ""  # e.g. "2 processes (libjemalloc.so.2)": the parse pool, when there was one
    sync_threads: int | None = None  # FAISS threads of background syncs (None: FAISS's default)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    def summary(self) -> dict[str, Any]:
        by = {s: sum(1 for f in self.files if f.status == s) for s in ("ingested", "skipped", "failed")}
        parsed: dict[str, int] = {}
        for f in self.files:
            if f.parsed_by:
                parsed[f.parsed_by] = parsed.get(f.parsed_by, 0) + 1
        return {"files": by, "parsed_by": parsed, "articles": sum(f.articles for f in self.files),
                "deletions": sum(f.deletions for f in self.files), "sync": self.sync,
                "seconds": round(self.seconds, 2), "parse_workers": self.parse_workers,
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


def spool_records(records: Iterable[Record], spool: Path | IO[bytes], chunker: Chunker | None = None) -> tuple[int, int]:
    """Write records as JSON lines ('A' article / 'D' deletion; with a ``chunker``, each 'A' line is
    followed by a 'C' line of its chunks) to a file or an open stream; returns (articles, deleted PMIDs)."""
    n_art = n_del = 0
    enc = msgspec.json.Encoder()
    held: list[Article] = []  # articles waiting for one chunk_many() call (record order is kept)

    with open(spool, "wb") if isinstance(spool, Path) else nullcontext(spool) as f:
        def put_held() -> None:
            for a, cs in zip(held, chunker.chunk_many(held) if chunker else [[]] * len(held), strict=True):
                f.write(b"A" + article_to_json(a) + b"\n")
                if chunker:
                    f.write(b"C" + _chunks_enc.encode(cs) + b"\n")
            held.clear()

        for r in records:
            if isinstance(r, Article):
                held.append(r)
                n_art += 1
                if len(held) >= CHUNK_BATCH:
                    put_held()
            else:
                put_held()
                f.write(b"D" + enc.encode(r.pmids) + b"\n")
                n_del += len(r.pmids)
        put_held()
    return n_art, n_del


def read_spool(spool: Path) -> Iterator[Record | tuple[Article, list[Chunk]]]:
    """Records back in order; an article spooled with its chunks comes as (article, chunks)."""
    last: Article | None = None
    with open(spool, "rb") as f:
        for line in f:
            kind, body = line[:1], line[1:-1]
            if kind == b"C":
                assert last is not None, f"{spool}: chunks line without an article"
                yield last, _chunks_dec.decode(body)
                last = None
                continue
            if last is not None:
                yield last
                last = None
            if kind == b"A":
                last = article_from_json(body)
            else:
                yield Deletion(pmids=_int_tuple.decode(body))
    if last is not None:
        yield last


# ---- parse workers (spawned processes: nothing of the writer's state is shared) ---------------------
_worker_chunker: Chunker | None = None


def _worker_init(spec: str) -> None:
    """``spec``: a file holding the pickled ``Chunker.portable()`` of the writer."""
    global _worker_chunker
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker
    with open(spec, "rb") as f:
        _worker_chunker = Chunker.rebuild(pickle.load(f))


def _worker_parse(path: str, spool: str) -> ParseResult:
    """Parse + chunk ``path`` into ``spool``."""
    try:
        n_art, n_del = spool_records(iter_records(Path(path), check_md5=False), Path(spool), _worker_chunker)
    except BadSourceFile as e:
        return 0, 0, e.message
    return n_art, n_del, None


# ---- Ray parse tasks (any machine of the cluster: only the file's bytes travel, not its path) ----------
_ray_chunker: tuple[str, Chunker] | None = None  # (object id of its portable spec, chunker): per worker


def _ray_parse(data: bytes, name: str, setup: list[Any],
               lib: str | None) -> tuple[int, int, str | None, bytes, str, str]:
    """Ray task: parse + chunk one file's ``data`` (``name``: the writer's path, for the format and the
    errors); ``setup``: [ref of the writer's ``Chunker.portable()``], fetched once per worker; ``lib``: the
    allocator its runtime environment preloads. Returns the ``ParseResult``, the spool's lines gzip-compressed
    (b"" for a bad file), the allocator this worker has, and its node's address."""
    global _ray_chunker
    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one CPU per task
    if _ray_chunker is None or _ray_chunker[0] != setup[0].hex():
        _ray_chunker = (setup[0].hex(), Chunker.rebuild(ray.get(setup[0])))
    buf = io.BytesIO()
    err: str | None = None
    try:
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as out:
            n_art, n_del = spool_records(iter_records(name, data=data), cast(IO[bytes], out), _ray_chunker[1])
    except BadSourceFile as e:
        n_art, n_del, err = 0, 0, e.message
    return n_art, n_del, err, b"" if err else buf.getvalue(), in_use(lib), ray.util.get_node_ip_address()


def worker_count(settings: Settings, n_files: int) -> int:
    """Parse processes for ``n_files`` files: ``ingest.workers`` (0: the CPU count), at most one per file."""
    want = settings.ingest.workers or len(os.sched_getaffinity(0))
    return max(1, min(want, n_files))


@dataclass
class _Parsed:
    """A file parsed into a spool, waiting to be applied."""
    key: str
    md5: str
    spool: Path
    articles: int
    deletions: int


class Pipeline:
    """Owns one ``Indexer`` (the single writer); use as a context manager or call ``close()``."""

    def __init__(self, settings: Settings, indexer: Any | None = None, *, progress: bool = True) -> None:
        self.settings = settings
        self.progress = progress
        self._indexer = indexer
        self._own = indexer is None
        self._swept = False

    @property
    def indexer(self) -> Any:
        return self._writer()

    def _writer(self) -> Any:
        """The indexer, opened on first use (it takes the home's writer lock); the first call also sweeps what
        a killed run left in ``ingest_dir``: under the lock no other pipeline writes there."""
        if self._indexer is None:
            from retrieval.indexer import Indexer

            self._indexer = Indexer(self.settings)
        if not self._swept:
            self._swept = True
            self._sweep()
        return self._indexer

    def _sweep(self) -> None:
        """Remove the spools and chunker specs that an interrupted (killed) run left in ``ingest_dir``."""
        d = self.settings.ingest_dir
        stale = [*d.glob("spool-*.jsonl"), *d.glob("worker-chunker-*.pkl")] if d.is_dir() else []
        size = sum(p.stat().st_size for p in stale)
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.warning("ingest: removed %d %s (%.1f MB) that an interrupted run left in %s", len(stale),
                        "file" if len(stale) == 1 else "files", size / 1e6, d)

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
        results = self.apply_in_order(files, len(files), report, force=force)
        with tqdm(total=len(files), desc="files", unit="file", disable=not self.progress or len(files) < 2) as bar:
            try:
                for res in results:
                    bar.set_postfix_str(Path(res.path).name)
                    bar.update()
                    report.files.append(res)
                    pending += res.apply.get("chunks_added", 0) + res.apply.get("chunks_removed", 0)
                    # embed as we go on long runs, while the next files are stored
                    if sync and pending >= self.settings.index.save_every and self.indexer.sync_async(report.sync_threads):
                        pending = 0
            except BaseException:
                results.close()  # stops the parsing, removes its spools
                self.indexer.abandon_sync()
                raise
        if sync:  # the background sync, then what is left (a no-op when nothing is pending)
            synced += [self.indexer.wait_sync(), self.indexer.sync(progress=self.progress)]
        if synced:
            report.sync = msgspec.to_builtins(_sum(synced))
        report.seconds = time.perf_counter() - t0
        return report

    def apply_in_order(self, files: Iterable[Path], n_files: int, report: IngestReport, *, force: bool = False,
                       ready: Callable[[], bool] | None = None) -> Generator[FileResult, None, None]:
        """Parse ``files`` where the settings say (parse processes, Ray tasks, or this process) and apply
        each, in order, as it is ready: one ``FileResult`` per file. ``n_files``: how many paths ``files``
        yields at most (it sizes the pool; ``files`` may be lazy, e.g. downloads in progress). ``ready()``:
        whether ``files`` can yield its next path without blocking; while it cannot, parsed files are applied
        first. ``report.parse_workers`` and ``report.sync_threads`` are set. Close the generator to stop:
        parsing ends and its spools are removed."""
        workers = worker_count(self.settings, n_files)
        if self.settings.ingest.executor == "ray" and n_files > 1:
            return self._on_ray(files, n_files, force, report, ready)
        if workers > 1:
            report.sync_threads = max(1, len(os.sched_getaffinity(0)) - workers)  # the cores the workers leave
            return self._parallel(files, n_files, force, workers, report, ready)
        return (self.ingest_file(path, force=force, sync=False) for path in files)

    def ingest_file(self, path: str | Path, *, force: bool = False, sync: bool = True) -> FileResult:
        """Parse ``path`` completely, then apply it. Returns ``failed`` (with the error) for a bad file
        (nothing of it is applied); other errors (store, embedder) propagate."""
        checked = self._check(Path(path), force)
        if isinstance(checked, FileResult):
            return checked
        key, md5 = checked
        spool = self._new_spool()
        try:
            try:
                recs = iter_records(Path(path), check_md5=False)  # checked above
                if self.progress:
                    recs = tqdm(recs, desc=f"parse {Path(path).name}", unit="rec", leave=False)
                n_art, n_del = spool_records(recs, spool)
            except BadSourceFile as e:
                return FileResult(key, "failed", md5=md5, error=e.message, parsed_by="writer")
            return self._apply(_Parsed(key, md5, spool, n_art, n_del), sync, "writer")
        finally:
            spool.unlink(missing_ok=True)

    def _check(self, path: Path, force: bool) -> tuple[str, str] | FileResult:
        """(key, md5) of a file to ingest, or its result: failed (md5 sidecar mismatch) / skipped."""
        key = str(path.resolve())
        try:
            md5 = verify_md5(path)
        except BadSourceFile as e:
            return FileResult(key, "failed", error=e.message)
        if not force and self.indexer.store.file_done(key, md5):
            return FileResult(key, "skipped", md5=md5)
        return key, md5

    def _new_spool(self) -> Path:
        return self._new_temp("spool-", ".jsonl")

    def _new_temp(self, prefix: str, suffix: str) -> Path:
        """A new empty file in ``ingest_dir``."""
        self._writer()  # first: it takes the writer lock and sweeps what a killed run left
        self.settings.ingest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=self.settings.ingest_dir)
        os.close(fd)
        return Path(tmp)

    def _apply(self, p: _Parsed, sync: bool, parsed_by: str) -> FileResult:
        stats = self.indexer.apply(read_spool(p.spool), progress=self.progress, sync=sync)
        counts = {"articles": p.articles, "deletions": p.deletions, **stats.apply.to_dict()}
        self.indexer.store.mark_file(p.key, p.md5, counts)
        return FileResult(p.key, "ingested", md5=p.md5, articles=p.articles, deletions=p.deletions,
                          apply=stats.apply.to_dict(), parsed_by=parsed_by)

    def _in_order(self, files: Iterable[Path], force: bool, window: int, parsed_by: str,
                  submit: Callable[[Path, Path], Callable[[], ParseResult]], stop: Callable[[], None],
                  ready: Callable[[], bool] | None = None) -> Iterator[FileResult]:
        """Parse ``files`` elsewhere and apply each (in file order) as it is ready: ``submit(path, spool)``
        starts parsing ``path`` and returns a wait that blocks until ``spool`` is written; ``stop()`` ends
        (or waits out) all parsing. At most ``window`` files are in flight; the next path is only taken
        while none is, or ``ready()`` says it comes without blocking. All spools are removed however this
        ends, after ``stop()``, so no parse writes a spool after its removal."""
        inflight: deque[tuple[tuple[str, str] | FileResult, Path | None, Callable[[], ParseResult] | None]] = deque()
        todo = iter(files)
        try:
            while True:
                while (len(inflight) < window and (not inflight or ready is None or ready())
                       and (path := next(todo, None)) is not None):
                    checked = self._check(path, force)
                    if isinstance(checked, FileResult):
                        inflight.append((checked, None, None))
                    else:
                        sp = self._new_spool()
                        inflight.append((checked, sp, submit(path, sp)))
                if not inflight:
                    return
                checked, out, wait = inflight[0]
                if isinstance(checked, FileResult) or out is None or wait is None:
                    assert isinstance(checked, FileResult)
                    inflight.popleft()
                    yield checked
                    continue
                try:
                    n_art, n_del, err = wait()
                    key, md5 = checked
                    if err is not None:
                        yield FileResult(key, "failed", md5=md5, error=err, parsed_by=parsed_by)
                    else:
                        yield self._apply(_Parsed(key, md5, out, n_art, n_del), False, parsed_by)
                finally:
                    out.unlink(missing_ok=True)
                    inflight.popleft()
        finally:
            stop()
            for _, left, _ in inflight:
                if left is not None:
                    left.unlink(missing_ok=True)

    def _parallel(self, files: Iterable[Path], n_files: int, force: bool, workers: int, report: IngestReport,
                  ready: Callable[[], bool] | None) -> Generator[FileResult, None, None]:
        """Parse + chunk ``files`` in ``workers`` processes (each writes its file's spool), at most
        ``2 * workers`` files in flight; ``report.parse_workers`` says how many, with which allocator."""
        ctx = mp.get_context("spawn")  # the writer holds torch/sqlite state that must not be forked
        # The chunker (its tokenizer's JSON: ~0.7 MB) goes to the workers in a file, not in the pickle that
        # spawn writes into each new process's pipe: CPython's parent keeps that pipe's read end open until
        # the write returns, so a child that dies before reading it (e.g. a script without the
        # ``if __name__ == "__main__":`` guard) would block a write over 64 KiB forever.
        spec = self._new_temp("worker-chunker-", ".pkl")
        spec.write_bytes(pickle.dumps(self.indexer.chunker.portable()))
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(str(spec),))

        def died(path: Path) -> WorkerFailed:
            return WorkerFailed(f"ingest: a parse process ended abruptly while parsing {path} (killed, out of "
                                f"memory, or it could not start; a script that ingests must do so under "
                                f"`if __name__ == \"__main__\":`, as parse processes are spawned and import "
                                f"its main module)", param="ingest.workers")

        def submit(path: Path, spool: Path) -> Callable[[], ParseResult]:
            try:
                fut = pool.submit(_worker_parse, str(path), str(spool))  # starts a worker if none is idle
            except BrokenProcessPool:
                raise died(path) from None

            def wait() -> ParseResult:
                try:
                    return fut.result()
                except BrokenProcessPool:
                    raise died(path) from None
            return wait

        from retrieval.index import faiss_threads  # here: parse workers import this module, not faiss

        # The pool starts its processes on submit, inside: all of them with the allocator of worker_malloc.
        try:
            with workers_malloc(self.settings.ingest.worker_malloc, self.settings.ingest_dir) as malloc, \
                    faiss_threads(len(os.sched_getaffinity(0)) - workers):  # the cores the workers leave
                report.parse_workers = f"{workers} processes ({malloc})"
                log.info("ingest: %d files, %d parse processes (%s)", n_files, workers, malloc)
                yield from self._in_order(files, force, 2 * workers, "process", submit,
                                          lambda: pool.shutdown(wait=True, cancel_futures=True), ready)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            spec.unlink(missing_ok=True)

    def _on_ray(self, files: Iterable[Path], n_files: int, force: bool, report: IngestReport,
                ready: Callable[[], bool] | None) -> Generator[FileResult, None, None]:
        """Parse + chunk ``files`` as Ray tasks (one CPU each): the writer ``ray.put``s a file's bytes, the
        task returns its spool compressed, the writer spools it. In flight: ``2 * ingest.workers`` files, or
        twice the CPUs the cluster has free once the embedding actors are placed. The tasks preload the
        allocator of ``ingest.worker_malloc`` (``ingest.malloc``); ``report.parse_workers`` says which they
        had, e.g. ``Ray tasks (local; libjemalloc.so.2)``."""
        ray = ray_init(self.settings)
        setup = [ray.put(self.indexer.chunker.portable())]  # once; starts the indexer
        cpus = self.settings.ingest.workers or int(ray.available_resources().get("CPU", 1))
        window = 2 * max(1, cpus)
        setting = self.settings.ingest.worker_malloc
        lib = resolve_malloc(setting)
        env = {"env_vars": {"LD_PRELOAD": lib}} if lib else {}
        task = ray.remote(num_cpus=1, runtime_env=env)(_ray_parse)
        running: dict[Path, Any] = {}  # spool -> ObjectRef of the task that fills it
        had: set[str] = set()  # allocators the tasks reported
        where = self.settings.ingest.ray_address
        report.parse_workers = f"Ray tasks ({where})"
        log.info("ingest: parsing on Ray (%s): %d files, window %d", self.settings.ingest.ray_address,
                 n_files, window)

        def submit(path: Path, spool: Path) -> Callable[[], ParseResult]:
            running[spool] = task.remote(ray.put(path.read_bytes()), str(path), setup, lib)

            def wait() -> ParseResult:
                n_art, n_del, err, payload, malloc, node = ray.get(running.pop(spool))
                if malloc == SYSTEM_MALLOC and lib and setting != "auto":
                    raise ConfigError(f"ingest.worker_malloc={setting!r}: a Ray parse task on {node} started "
                                      f"without it (LD_PRELOAD={lib}); install it on every node, or use 'auto'",
                                      param="ingest.worker_malloc")
                had.add(malloc)
                report.parse_workers = f"Ray tasks ({where}; {', '.join(sorted(had))})"
                with gzip.GzipFile(fileobj=io.BytesIO(payload)) as src, open(spool, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                return n_art, n_del, err

            return wait

        def stop() -> None:
            for ref in running.values():
                ray.cancel(ref)
            running.clear()

        yield from self._in_order(files, force, window, "ray", submit, stop, ready)

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

