"""NCBI E-utilities client: esearch on the history server, batched efetch, date-window splitting past the
esearch 10,000-record window, rate limiting, retries with exponential backoff and resumable progress.

Requests are built by ``Bio.Entrez`` (tool/email/api_key parameters, POST for long id lists) against
``settings.eutils.base_url``; biopython 1.8x hard-codes the NCBI host in ``Entrez.esearch``/``efetch``,
so we build the request with ``Entrez._build_request`` on our base URL and open it ourselves (with a
timeout, our rate limiter and our retry policy, instead of biopython's fixed 15 s sleeps). esearch
responses are read with ``Entrez.read`` (its esearch DTD ships with biopython, no network); efetch
responses with the same parser as files (``ingest.parse``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from Bio import Entrez
from Bio.Entrez import Parser as EntrezParser

from ingest.parse import Record, eutils_error, parse_xml_bytes
from pubmind.durable import write_json_atomic
from pubmind.errors import BadSourceFile, InvalidInput, UpstreamError
from pubmind.settings import Settings

WINDOW_LIMIT = 9_999  # esearch/efetch cannot page past retstart 9,999 in PubMed
DEFAULT_MINDATE = dt.date(1000, 1, 1)
DEFAULT_MAXDATE = dt.date(3000, 12, 31)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_NET_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


class RateLimiter:
    """At most ``rate`` request starts per second (spacing ``1/rate``); thread-safe; clock injectable."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise InvalidInput(f"requests_per_second must be > 0, got {rate}", param="requests_per_second")
        self.interval = 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next:
                self._sleep(self._next - now)
                now = self._next
            self._next = now + self.interval


@dataclass
class SearchResult:
    count: int
    webenv: str | None
    query_key: str | None
    ids: list[int]


@dataclass
class Window:
    """One publication-date window (inclusive, ``YYYY/MM/DD``) small enough for history paging."""

    mindate: str
    maxdate: str
    count: int
    done: int = 0  # records of this window fetched *and applied* (retstart to resume from)


@dataclass
class QueryProgress:
    """Resumable state of one ``ingest pubmed`` query, kept as JSON (written atomically)."""

    query: str
    mindate: str
    maxdate: str
    windows: list[Window] = field(default_factory=list)
    fetched: int = 0
    complete: bool = False
    path: Path | None = field(default=None, compare=False)

    @staticmethod
    def path_for(state_dir: Path, query: str, mindate: str, maxdate: str) -> Path:
        key = hashlib.sha256(json.dumps([query, mindate, maxdate]).encode()).hexdigest()[:16]
        return state_dir / f"query-{key}.json"

    @classmethod
    def load(cls, path: Path) -> QueryProgress | None:
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            data["windows"] = [Window(**w) for w in data["windows"]]
            return cls(**data, path=path)
        except (ValueError, TypeError, KeyError) as e:
            raise BadSourceFile(str(path), f"corrupt query progress file ({e}); delete it to start over") from None

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data.pop("path")
        write_json_atomic(self.path, data, indent=1)


def parse_date(value: str, *, end: bool) -> dt.date:
    """'YYYY', 'YYYY/MM', 'YYYY/MM/DD' (or with '-') -> first (``end=False``) or last day it covers."""
    parts = value.strip().replace("-", "/").split("/")
    try:
        nums = [int(p) for p in parts]
        if len(nums) == 1:
            return dt.date(nums[0], 12, 31) if end else dt.date(nums[0], 1, 1)
        if len(nums) == 2:
            y, m = nums
            if not end:
                return dt.date(y, m, 1)
            nxt = dt.date(y + (m == 12), m % 12 + 1, 1)
            return nxt - dt.timedelta(days=1)
        if len(nums) == 3:
            return dt.date(*nums)
    except ValueError:
        pass
    param = "maxdate" if end else "mindate"
    raise InvalidInput(f"{param} {value!r} is not a date (YYYY, YYYY/MM or YYYY/MM/DD)", param=param)


def _fmt(d: dt.date) -> str:
    return f"{d.year:04d}/{d.month:02d}/{d.day:02d}"


class EutilsClient:
    """E-utilities for PubMed. ``clock``/``sleep`` are injectable so tests can measure the rate limiter."""

    window_limit = WINDOW_LIMIT

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        cfg = settings.eutils
        self.cfg = cfg
        self.base_url = cfg.base_url if cfg.base_url.endswith("/") else cfg.base_url + "/"
        Entrez.tool = cfg.tool
        Entrez.email = cfg.email or None  # type: ignore[assignment]  # Bio declares these as None
        Entrez.api_key = cfg.api_key or None  # type: ignore[assignment]
        rate = cfg.requests_per_second or (10.0 if cfg.api_key else 3.0)
        self.limiter = RateLimiter(rate, clock=clock, sleep=sleep)
        self._sleep = sleep
        self.requests = 0  # HTTP attempts made (including retries)

    # -------------------------------------------------------------------------------------- HTTP
    def _request(self, util: str, params: dict[str, Any]) -> bytes:
        with warnings.catch_warnings():  # biopython warns on every request without an e-mail
            warnings.simplefilter("ignore", UserWarning)
            req = Entrez._build_request(self.base_url + f"{util}.fcgi", dict(params))
        what = f"E-utilities {util}"
        last = ""
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                delay = self.cfg.backoff_seconds * (2 ** (attempt - 1))
                self._sleep(delay)
            self.limiter.wait()
            self.requests += 1
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_seconds) as resp:
                    return resp.read()
            except urllib.error.HTTPError as e:
                body = e.read()[:300].decode("utf-8", "replace")
                if e.code not in _RETRY_STATUS:
                    raise UpstreamError(f"{what}: HTTP {e.code} {e.reason}: {body.strip()}") from None
                last = f"HTTP {e.code} {e.reason}"
            except _NET_ERRORS as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        raise UpstreamError(f"{what}: gave up after {attempts} attempts ({self.cfg.max_retries} retries); "
                            f"last error: {last} ({self.base_url})")

    # -------------------------------------------------------------------------------------- esearch
    def search(self, query: str, *, mindate: str | None = None, maxdate: str | None = None,
               retmax: int = 0, usehistory: bool = True) -> SearchResult:
        if not query.strip():
            raise InvalidInput("query is empty", param="query")
        params: dict[str, Any] = {"db": "pubmed", "term": query, "retmax": retmax}
        if usehistory:
            params["usehistory"] = "y"
        if mindate or maxdate:
            params.update(datetype="pdat", mindate=mindate or _fmt(DEFAULT_MINDATE),
                          maxdate=maxdate or _fmt(DEFAULT_MAXDATE))
        data = self._request("esearch", params)
        msg = eutils_error(data)
        if msg and "ErrorList" in msg:
            raise InvalidInput(f"PubMed rejected query {query!r}: {msg}", param="query")
        if msg:
            raise UpstreamError(f"E-utilities esearch error for {query!r}: {msg}")
        try:
            rec = Entrez.read(io.BytesIO(data), validate=False)  # tolerate DTD additions
        except (EntrezParser.ValidationError, EntrezParser.CorruptedXMLError, EntrezParser.NotXMLError,
                RuntimeError) as e:
            raise UpstreamError(f"E-utilities esearch returned unreadable XML: {e}") from None
        if "Count" not in rec:
            raise UpstreamError(f"E-utilities esearch response has no Count (keys {sorted(rec)})")
        return SearchResult(count=int(rec["Count"]), webenv=rec.get("WebEnv"), query_key=rec.get("QueryKey"),
                            ids=[int(i) for i in rec.get("IdList", [])])

    # -------------------------------------------------------------------------------------- efetch
    def _efetch(self, params: dict[str, Any], what: str) -> list[Record]:
        params = {"db": "pubmed", "retmode": "xml", **params}
        data = self._request("efetch", params)
        msg = eutils_error(data[:4096]) if b"<PubmedArticle" not in data[:4096] else None
        if msg:
            raise UpstreamError(f"E-utilities efetch error ({what}): {msg}")
        try:
            return parse_xml_bytes(data, f"efetch {what}")
        except BadSourceFile as e:
            raise UpstreamError(f"E-utilities efetch returned unusable data: {e.message}") from None

    def fetch_ids(self, pmids: Sequence[int]) -> list[Record]:
        """Articles for ``pmids`` (batched by ``settings.eutils.batch_size``; POST for long lists)."""
        out: list[Record] = []
        bs = self.cfg.batch_size
        for i in range(0, len(pmids), bs):
            chunk = [str(p) for p in pmids[i:i + bs]]
            out += self._efetch({"id": ",".join(chunk)}, f"id={chunk[0]}..({len(chunk)} ids)")
        return out

    def fetch_history(self, webenv: str, query_key: str, retstart: int, retmax: int) -> list[Record]:
        return self._efetch({"WebEnv": webenv, "query_key": query_key, "retstart": retstart, "retmax": retmax},
                            f"retstart={retstart} retmax={retmax}")

    # -------------------------------------------------------------------------------------- windows
    def plan(self, query: str, lo: dt.date, hi: dt.date, count: int | None = None) -> list[Window]:
        """Split [lo, hi] (publication date) until every window holds <= ``window_limit`` records."""
        out: list[Window] = []
        stack: list[tuple[dt.date, dt.date, int | None]] = [(lo, hi, count)]
        max_windows = 100_000  # bounded: ~274 years of single days
        while stack:
            a, b, n = stack.pop()
            if n is None:
                n = self.search(query, mindate=_fmt(a), maxdate=_fmt(b), usehistory=False).count
            if n <= self.window_limit:
                if n:
                    out.append(Window(_fmt(a), _fmt(b), n))
                continue
            if a == b:
                raise UpstreamError(f"query {query!r} matches {n} records published on the single day {_fmt(a)}, "
                                    f"more than E-utilities can page ({self.window_limit}); narrow the query")
            mid = a + (b - a) // 2
            stack.append((mid + dt.timedelta(days=1), b, None))
            stack.append((a, mid, None))
            if len(out) + len(stack) > max_windows:
                raise UpstreamError(f"query {query!r}: more than {max_windows} date windows; narrow the query")
        return out

    def iter_query(self, query: str, *, mindate: str | None = None, maxdate: str | None = None,
                   max_records: int | None = None, state_dir: Path | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Iterator[list[Record]]:
        """Yield efetch batches of ``query``'s records, resuming from saved progress in ``state_dir``.

        Progress for a batch is saved when the consumer asks for the next one (or the generator ends), i.e.
        after the consumer has applied it: a crash while applying re-fetches that batch (upserts are
        idempotent), a crash never skips one. ``progress(done, total)`` is called after every batch.
        """
        lo = parse_date(mindate, end=False) if mindate else DEFAULT_MINDATE
        hi = parse_date(maxdate, end=True) if maxdate else DEFAULT_MAXDATE
        if lo > hi:
            raise InvalidInput(f"mindate {mindate} is after maxdate {maxdate}", param="mindate")
        key_min, key_max = _fmt(lo), _fmt(hi)
        path = QueryProgress.path_for(state_dir, query, key_min, key_max) if state_dir else None
        state = QueryProgress.load(path) if path else None
        if state is None or state.complete:
            first = self.search(query, mindate=key_min if mindate else None,
                                maxdate=key_max if maxdate else None, usehistory=False)
            state = QueryProgress(query, key_min, key_max, path=path)
            if first.count:
                # Without dates and within the window: one unbounded window, no date filter.
                state.windows = ([Window("", "", first.count)] if first.count <= self.window_limit
                                 and not (mindate or maxdate) else self.plan(query, lo, hi, first.count))
            state.save()
        total = sum(w.count for w in state.windows)
        limit = total if max_records is None else min(total, max_records)
        if progress:
            progress(state.fetched, limit)
        for w in state.windows:
            if state.fetched >= limit:
                break
            if w.done >= w.count:
                continue
            res = self.search(query, mindate=w.mindate or None, maxdate=w.maxdate or None)
            if res.count != w.count:  # PubMed changed under us: offsets moved, redo the window from 0
                w.count, w.done = res.count, 0
            if res.count and not (res.webenv and res.query_key):
                raise UpstreamError("E-utilities esearch (usehistory=y) returned no WebEnv/QueryKey")
            while w.done < w.count and state.fetched < limit:
                n = min(self.cfg.batch_size, w.count - w.done, limit - state.fetched)
                records = self.fetch_history(res.webenv or "", res.query_key or "", w.done, n)
                yield records
                w.done += n
                state.fetched += n
                state.save()
                if progress:
                    progress(state.fetched, limit)
        state.complete = all(w.done >= w.count for w in state.windows)  # else a later run resumes
        state.save()
