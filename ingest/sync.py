"""``pubmind sync``: keep the corpus in step with NLM's PubMed distribution.

The mirror (``settings.sync.mirror``, NLM's ``https://ftp.ncbi.nlm.nih.gov/pubmed/`` by default) has
``baseline/`` and ``updatefiles/``, each an HTML index of ``pubmedYYnNNNN.xml.gz`` files with ``.md5``
sidecars (``YY``: the year of the annual baseline; ``NNNN``: update files continue the baseline's numbering).

One run: list both folders; check the listing against the home (one annual baseline per home, files applied
in order); download what is new on ``sync.concurrency`` threads, a few files ahead of the one being applied
(HTTP Range resumes a ``*.part`` left by a dropped connection or an earlier run; every request loop retries
at most ``sync.max_retries`` times with capped exponential backoff); verify each file against its ``.md5``
(one fresh re-download on a mismatch); apply the files one by one, in order (baseline by number, then update
files by number) through ``ingest.pipeline.Pipeline.ingest_file`` (all-or-nothing per file); record each
applied file in the corpus store (meta key ``pubmed_sync``). A refused file (MD5 or parse) stops the run:
nothing of it is applied, later files wait for the next run, the report names it.

Exactly once: the record of a file is written after its apply; a crash in between re-applies it on the next
run, which the pipeline recognises by checksum (the download is kept until it is recorded) and which would
be harmless anyway (upserts are idempotent and no later file was applied).
"""

from __future__ import annotations

import fcntl
import posixpath
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec
from tqdm import tqdm

from ingest.parse import verify_md5
from ingest.pipeline import IngestReport, Pipeline
from pubmind.errors import BadSourceFile, Conflict, InvalidInput, PubmindError, UpstreamError
from pubmind.settings import Settings

FOLDERS = ("baseline", "updatefiles")  # apply order: every baseline file, then the update files
STATE_KEY = "pubmed_sync"  # corpus-store meta key holding SyncState (JSON)
FILE_RE = re.compile(r"^pubmed(\d{2})n(\d{4,})\.xml\.gz$")
_HREF_RE = re.compile(r"""href\s*=\s*["']?([^"'\s>]+)""", re.I)
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RemoteFile:
    folder: str  # "baseline" | "updatefiles"
    name: str  # pubmedYYnNNNN.xml.gz
    year: int  # YY
    number: int  # NNNN
    url: str

    @property
    def key(self) -> tuple[int, int]:
        """Apply order: baseline before updates, then by number."""
        return FOLDERS.index(self.folder), self.number

    @property
    def label(self) -> str:
        return f"{self.folder}/{self.name}"


def parse_listing(html: str, folder_url: str, folder: str) -> list[RemoteFile]:
    """The PubMed files in an HTML index page (Apache/NLM style ``<a href="pubmed26n0001.xml.gz">``),
    sorted by number. Other links (parent folder, README, ``.md5``, stats) are ignored."""
    files = {}
    for href in _HREF_RE.findall(html):
        name = posixpath.basename(urlsplit(href).path)
        m = FILE_RE.match(name)
        if m:
            files[name] = RemoteFile(folder, name, int(m[1]), int(m[2]), urljoin(folder_url, name))
    return sorted(files.values(), key=lambda f: f.number)


class SyncState(msgspec.Struct, kw_only=True):
    """What this home has applied from the mirror (stored in the corpus store, so it goes with it)."""

    year: int | None = None  # YY of the annual baseline this home holds
    applied: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)  # label -> md5, counts, time

    def last(self) -> tuple[int, int] | None:
        """Order key of the latest applied file."""
        return max(map(_label_key, self.applied), default=None)


@dataclass
class Download:
    path: Path
    bytes: int  # fetched over the network in this run (0: reused a complete earlier download)
    seconds: float
    ranged: bool  # some request resumed with a Range header


@dataclass
class SyncReport:
    mirror: str
    year: int | None = None
    listed: dict[str, int] = field(default_factory=dict)
    applied_before: int = 0
    new: list[str] = field(default_factory=list)  # labels selected for this run, in apply order
    applied: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] | None = None  # {"file": label, "error": message}
    waiting: list[str] = field(default_factory=list)  # not applied because an earlier file was refused
    downloaded_bytes: int = 0
    download_seconds: float = 0.0  # summed over files (they overlap with each other and with applying)
    index: dict[str, Any] = field(default_factory=dict)
    parse_workers: str = ""  # e.g. "2 processes (libjemalloc.so.2)": where the files were parsed, if not here
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return asdict(self)


class Syncer:
    """Mirror ``mirror`` (default ``settings.sync.mirror``) into the home of ``settings``.

    ``pipeline``: an open ``Pipeline`` to apply files with (tests pass one with a stand-in embedder); by
    default one is opened only when there is something to apply. ``log``: one line per event (stderr in
    the CLI)."""

    def __init__(self, settings: Settings, *, mirror: str | None = None, pipeline: Pipeline | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings, self.cfg = settings, settings.sync
        self.mirror = _check_mirror(mirror if mirror is not None else self.cfg.mirror)
        self.progress = progress
        self.log = log or (lambda _msg: None)
        self._pipeline, self._own_pipeline = pipeline, pipeline is None
        self._sleep = sleep
        self._stop = threading.Event()
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.cfg.timeout_seconds), follow_redirects=True, max_redirects=5,
            headers={"User-Agent": "pubmind-sync", "Accept-Encoding": "identity"})

    def close(self) -> None:
        self._client.close()
        if self._own_pipeline and self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.settings, progress=self.progress)
        return self._pipeline

    # ---------------------------------------------------------------------------------------- state
    def read_state(self) -> SyncState:
        return read_state(self.settings)

    def _write_state(self, state: SyncState) -> None:
        self.pipeline.indexer.store.set_meta(STATE_KEY, msgspec.json.encode(state).decode())

    # ---------------------------------------------------------------------------------------- plan
    def list_mirror(self) -> dict[str, list[RemoteFile]]:
        out = {}
        for folder in FOLDERS:
            url = urljoin(self.mirror, folder + "/")
            out[folder] = parse_listing(self._get(url).decode("utf-8", "replace"), url, folder)
        return out

    def plan(self, listing: dict[str, list[RemoteFile]], state: SyncState, *, baseline: bool = True,
             updates: bool = True, max_files: int | None = None) -> list[RemoteFile]:
        """The files to apply now, in order. Raises ``Conflict`` (nothing done) for a new annual baseline,
        a listing with several years, a file that would apply out of order, or updates on an unfinished
        baseline."""
        every = [f for folder in FOLDERS for f in listing[folder]]
        years = sorted({f.year for f in every})
        home = state.year
        if home is None and len(years) > 1:
            raise Conflict(f"the mirror {self.mirror} lists files of several annual baselines "
                           f"({', '.join(f'pubmed{y:02d}n*' for y in years)}); sync one year per home",
                           param="mirror")
        newer = [f for f in every if home is not None and f.year > home]
        if newer:
            raise Conflict(
                f"the mirror now holds a new annual baseline ({newer[0].label}, pubmed{newer[0].year:02d}n*) but "
                f"this home ({self.settings.home}) holds the pubmed{home:02d}n* baseline and its updates. A new "
                f"baseline re-issues every citation and is not applied on top of the old one: re-baseline into "
                f"a new home (PUBMIND_HOME=<new home> pubmind sync), then point the server at it (README: "
                f"'Re-baseline')", param="mirror")
        for f in every:
            if home is not None and f.year < home:
                self.log(f"ignoring {f.label}: older than this home's pubmed{home:02d}n* baseline")
        current = [f for f in every if home is None or f.year == home]
        todo = sorted((f for f in current if f.label not in state.applied
                       and ((baseline and f.folder == "baseline") or (updates and f.folder == "updatefiles"))),
                      key=lambda f: f.key)
        last = state.last()
        early = [f for f in todo if last is not None and f.key < last]
        if early:
            raise Conflict(f"{early[0].label} is new on the mirror but numbered before files this home has "
                           f"already applied; applying it now would break the order of updates (re-baseline "
                           f"into a new home to include it)", param="mirror")
        left = [f for f in current if f.folder == "baseline" and f.label not in state.applied]
        has_base = any(label.startswith("baseline/") for label in state.applied)
        if updates and not baseline and left and has_base:
            raise Conflict(f"the baseline of this home is unfinished ({len(left)} baseline files left, next "
                           f"{left[0].label}); run 'pubmind sync' or 'pubmind sync --baseline-only' first",
                           param="updates_only")
        return todo[:max_files] if max_files is not None else todo

    # ---------------------------------------------------------------------------------------- run
    def run(self, *, baseline: bool = True, updates: bool = True, max_files: int | None = None) -> SyncReport:
        """List, plan, download and apply. Pre-flight problems raise (nothing done); a refused or failed
        file ends the run with ``report.failed`` set (files before it stay applied)."""
        if not (baseline or updates):
            raise InvalidInput("nothing to sync: both baseline and updates are excluded", param="updates_only")
        if max_files is not None and max_files < 1:
            raise InvalidInput(f"max_files must be >= 1, got {max_files}", param="max_files")
        t0 = time.perf_counter()
        with self._lock():
            listing = self.list_mirror()
            state = self.read_state()
            todo = self.plan(listing, state, baseline=baseline, updates=updates, max_files=max_files)
            report = SyncReport(mirror=self.mirror, year=state.year or (todo[0].year if todo else None),
                                listed={k: len(v) for k, v in listing.items()}, applied_before=len(state.applied),
                                new=[f.label for f in todo])
            self.log(f"mirror {self.mirror}: {report.listed['baseline']} baseline + {report.listed['updatefiles']} "
                     f"update files listed, {len(state.applied)} applied before, {len(todo)} to apply now")
            if not todo:
                self.log("nothing new: this home is up to date with the mirror")
                if _unindexed(self.settings):  # a run that crashed between applying and embedding
                    self.log("embedding the chunks an interrupted run left pending")
                    self._add_index(report, self.pipeline.indexer.sync(progress=self.progress))
            else:
                self._apply_all(todo, state, report)
            report.seconds = round(time.perf_counter() - t0, 3)
        return report

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One sync per home at a time (they would share ``*.part`` files)."""
        self.settings.ingest_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.ingest_dir / "sync.lock"
        with open(path, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(f"another 'pubmind sync' is running on {self.settings.home} (lock {path})") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _apply_all(self, todo: list[RemoteFile], state: SyncState, report: SyncReport) -> None:
        """Download ``todo`` a few files ahead, parse the downloaded files in parallel (the pipeline's parse
        processes or Ray tasks) and apply them one by one, in order. The first refused file (a failed
        download, an MD5 mismatch, a parse error) ends the run: files before it stay applied, it and the later
        files wait; parsing still in flight is stopped and its spools removed."""
        ahead = 2 * self.cfg.concurrency  # downloads queued ahead of the file being parsed (bounds disk use)
        pipeline = self.pipeline
        pending_chunks = 0
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="pubmind-sync")
        futures: dict[int, Future[Download]] = {}
        downloads: deque[Download] = deque()  # handed to the pipeline, not yet applied (in order)
        refused: list[tuple[int, PubmindError]] = []  # the download that failed, if one did
        taken = 0  # downloads handed to the pipeline
        bytes_bar = tqdm(desc="download", unit="B", unit_scale=True, disable=not self.progress)
        files_bar = tqdm(total=len(todo), desc="sync", unit="file", disable=not self.progress)

        def submit(i: int) -> None:
            if i < len(todo):
                futures[i] = pool.submit(self.fetch, todo[i], bytes_bar.update)

        def downloaded() -> Iterator[Path]:
            """The files as their downloads complete, in order; stops at the first that failed."""
            nonlocal taken
            for i, rf in enumerate(todo):
                try:
                    dl = futures.pop(i).result()
                except PubmindError as e:
                    refused.append((i, e))
                    return
                submit(i + ahead)
                report.downloaded_bytes += dl.bytes
                report.download_seconds += dl.seconds
                if dl.bytes:
                    self.log(f"downloaded {rf.label}: {dl.bytes / 1e6:.1f} MB in {dl.seconds:.2f} s"
                             + (" (resumed with Range)" if dl.ranged else ""))
                else:
                    self.log(f"using the earlier complete download of {rf.label}")
                downloads.append(dl)
                taken = i + 1
                yield dl.path

        parse = IngestReport()
        results = pipeline.apply_in_order(downloaded(), len(todo), parse,
                                          ready=lambda: (f := futures.get(taken)) is None or f.done())
        try:
            for i in range(ahead):
                submit(i)
            for i, rf in enumerate(todo):
                files_bar.set_postfix_str(rf.name)
                try:
                    res = next(results, None)
                    if i == 0 and parse.parse_workers:
                        self.log(f"parsing on {parse.parse_workers}")
                    report.parse_workers = parse.parse_workers  # Ray tasks add their allocators as they report
                    if res is None:  # its download failed
                        assert refused and refused[0][0] == i, f"no result and no refused download for {rf.label}"
                        raise refused[0][1]
                    dl = downloads.popleft()
                    if res.status == "failed":
                        raise BadSourceFile(rf.url, f"refused, nothing of it applied: {res.error}")
                except PubmindError as e:
                    report.failed = {"file": rf.label, "error": e.message}
                    report.waiting = [f.label for f in todo[i + 1:]]
                    self.log(f"refused {rf.label}; {len(report.waiting)} later files wait for the next run "
                             f"(order matters)")
                    break
                state.year = rf.year
                state.applied[rf.label] = {"md5": res.md5, "articles": res.articles, "deletions": res.deletions,
                                           "applied_at": round(time.time(), 3)}
                self._write_state(state)  # after the apply: a crash in between re-applies (idempotent)
                if not self.cfg.keep_downloads:
                    dl.path.unlink(missing_ok=True)
                    dl.path.with_name(dl.path.name + ".md5").unlink(missing_ok=True)
                report.applied.append({"file": rf.label, "status": res.status, "articles": res.articles,
                                       "deletions": res.deletions, "bytes": dl.bytes})
                self.log(f"applied {rf.label}: {res.articles} articles, {res.deletions} deletions"
                         + (" (already in the store)" if res.status == "skipped" else ""))
                files_bar.update(1)
                pending_chunks += res.apply.get("chunks_added", 0) + res.apply.get("chunks_removed", 0)
                # embed as we go on long runs, while the next files are parsed and applied
                if pending_chunks >= self.settings.index.save_every and pipeline.indexer.sync_async(parse.sync_threads):
                    pending_chunks = 0
        except BaseException:
            pipeline.indexer.abandon_sync()
            raise
        finally:
            results.close()  # parsing in flight stops, its spools are removed
            self._stop.set()  # running downloads stop at their next chunk and keep their .part
            pool.shutdown(wait=True, cancel_futures=True)
            bytes_bar.close()
            files_bar.close()
        report.download_seconds = round(report.download_seconds, 3)
        self._add_index(report, pipeline.indexer.wait_sync())  # raises the background sync's failure
        if report.applied:
            self._add_index(report, pipeline.indexer.sync(progress=self.progress))

    def _add_index(self, report: SyncReport, stats: Any) -> None:
        st = msgspec.to_builtins(stats)
        for k, v in st.items():
            if isinstance(v, int | float):
                report.index[k] = report.index.get(k, 0) + v

    # ---------------------------------------------------------------------------------------- HTTP
    def fetch(self, rf: RemoteFile, on_bytes: Callable[[int], object] = lambda _n: None) -> Download:
        """Download ``rf`` and its ``.md5`` into the downloads folder and verify it (worker thread)."""
        t0 = time.perf_counter()
        dest = self.settings.downloads_dir / rf.folder / rf.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        side = dest.with_name(rf.name + ".md5")
        side.write_bytes(self._get(rf.url + ".md5", what=f"the MD5 sidecar of {rf.label}"))
        if dest.exists():  # complete download from an earlier run (kept, or applied but not yet recorded)
            try:
                verify_md5(dest)
                return Download(dest, 0, time.perf_counter() - t0, False)
            except BadSourceFile:
                dest.unlink()
        fetched, ranged = 0, False
        for attempt in (1, 2):
            n, r = self._download(rf.url, dest, on_bytes)
            fetched, ranged = fetched + n, ranged or r
            try:
                verify_md5(dest)
                return Download(dest, fetched, time.perf_counter() - t0, ranged)
            except BadSourceFile as e:
                dest.unlink(missing_ok=True)
                if attempt == 2:
                    raise BadSourceFile(rf.url, f"refused, nothing of it applied: {e.message} "
                                                f"(on two downloads)") from None
                self.log(f"{rf.label}: MD5 mismatch, downloading it again from the start")
        raise AssertionError("unreachable")

    def _download(self, url: str, dest: Path, on_bytes: Callable[[int], object]) -> tuple[int, bool]:
        """GET ``url`` into ``dest`` through ``dest.part``, resuming a partial ``.part`` with a Range
        request; retries (bounded) on network errors and 429/5xx. Returns (bytes fetched, used Range)."""
        part = dest.with_name(dest.name + ".part")
        fetched, ranged = 0, False
        last, retry_after = "", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._backoff(attempt, url, last, retry_after)
                retry_after = None
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            ranged = ranged or bool(have)
            try:
                with self._client.stream("GET", url, headers=headers) as r:
                    if r.status_code == 416 and have:  # .part is not a prefix of the file: start over
                        part.unlink()
                        last = "HTTP 416 (range not satisfiable)"
                        continue
                    if r.status_code in _RETRY_STATUS:
                        last, retry_after = f"HTTP {r.status_code}", r.headers.get("Retry-After")
                        continue
                    if r.status_code == 206 and not _range_starts_at(r.headers.get("Content-Range", ""), have):
                        part.unlink()
                        last = f"HTTP 206 with Content-Range {r.headers.get('Content-Range')!r}, asked from {have}"
                        continue
                    if r.status_code not in (200, 206):
                        raise UpstreamError(f"GET {url}: HTTP {r.status_code}")
                    with open(part, "ab" if r.status_code == 206 else "wb") as f:
                        for chunk in r.iter_raw():  # as received: a cut connection keeps what arrived
                            if self._stop.is_set():
                                raise _Stopped
                            f.write(chunk)
                            fetched += len(chunk)
                            on_bytes(len(chunk))
                part.replace(dest)
                return fetched, ranged
            except httpx.TransportError as e:  # connection refused/reset, timeout, body cut short
                last = f"{type(e).__name__}: {e}"
        raise UpstreamError(f"GET {url}: failed after {self.cfg.max_retries + 1} attempts (last: {last})")

    def _get(self, url: str, *, what: str = "") -> bytes:
        """A small GET (index page, ``.md5``) with the same bounded retries."""
        last, retry_after = "", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._backoff(attempt, url, last, retry_after)
                retry_after = None
            try:
                r = self._client.get(url)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 200:
                return r.content
            if r.status_code not in _RETRY_STATUS:
                raise UpstreamError(f"GET {url}{f' ({what})' if what else ''}: HTTP {r.status_code}")
            last, retry_after = f"HTTP {r.status_code}", r.headers.get("Retry-After")
        raise UpstreamError(f"GET {url}: failed after {self.cfg.max_retries + 1} attempts (last: {last})")

    def _backoff(self, attempt: int, url: str, why: str, retry_after: str | None) -> None:
        """Sleep before retry ``attempt`` (1-based): doubling from ``backoff_seconds``, at least the
        server's ``Retry-After`` seconds, at most ``max_backoff_seconds``."""
        delay = self.cfg.backoff_seconds * 2 ** (attempt - 1)
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        delay = min(delay, self.cfg.max_backoff_seconds)
        self.log(f"retry {attempt}/{self.cfg.max_retries} of {url} in {delay:.2f} s ({why})")
        if self._stop.is_set():
            raise _Stopped
        self._sleep(delay)


class _Stopped(PubmindError):
    """A download abandoned because the run ended (an earlier file failed); its ``.part`` is kept."""

    def __init__(self) -> None:
        super().__init__("download stopped: the sync run ended")


def _range_starts_at(content_range: str, start: int) -> bool:
    m = re.match(r"bytes (\d+)-", content_range.strip())
    return bool(m) and int(m.group(1)) == start  # type: ignore[union-attr]


def _check_mirror(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"mirror must be an http(s) URL of PubMed's pubmed/ folder, got {url!r}", param="mirror")
    return url if url.endswith("/") else url + "/"


def read_state(settings: Settings) -> SyncState:
    """What the home of ``settings`` has applied from the mirror (read-only; empty for a new home)."""
    if not settings.corpus_db.exists():
        return SyncState()
    from retrieval.store import CorpusStore

    with CorpusStore(settings.corpus_db) as store:
        raw = store.get_meta(STATE_KEY)
    return msgspec.json.decode(raw, type=SyncState) if raw else SyncState()


def _unindexed(settings: Settings) -> bool:
    """True if the store holds chunks not yet embedded (or removals not yet applied to the index)."""
    if not settings.corpus_db.exists():
        return False
    from retrieval.store import CorpusStore

    with CorpusStore(settings.corpus_db) as store:
        return store.count_pending() > 0 or len(store.removed_pending()) > 0


def _label_key(label: str) -> tuple[int, int]:
    folder, name = label.split("/")
    return FOLDERS.index(folder), int(FILE_RE.match(name)[2])  # type: ignore[index]

