"""``IndexHolder``: the FAISS index generation the API searches, and its ``Searcher``.

An ingest process saves new generations next to the running server. The holder notices a newer one (at most
every ``RELOAD_SECONDS``), opens it in a background thread with no lock held, and only then swaps the
reference under a short lock; searches in flight keep the generation they started with, and no request
(nor ``/health``, which only reads ``status()``) ever waits for a load.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio

from pubmind.errors import PubmindError, ServiceUnavailable
from pubmind.settings import Settings
from retrieval import index as vector_index
from retrieval.search import Reranker, Searcher, load_reranker
from retrieval.store import CorpusStore
from server.batching import QueryBatcher

log = logging.getLogger("pubmind.server")

RELOAD_SECONDS = 5.0  # how often a newer generation on disk is looked for while one is served
MISSING_RETRY_SECONDS = 1.0  # how often a missing/broken index is looked for again


@dataclass(frozen=True)
class Generation:
    """One opened index generation and the searcher over it."""

    index: vector_index.VectorIndex
    searcher: Searcher

    @property
    def version(self) -> str:
        return f"{self.index.created_at}#g{self.index.generation}"


@dataclass(frozen=True)
class IndexStatus:
    ready: bool
    version: str | None
    info: dict[str, Any]  # VectorIndex.info() of the served generation ({} when none)
    error: str | None  # why there is none (or why the last reload failed)


class IndexHolder:
    """Opens the index lazily (the embedder loads with the first generation) and swaps in newer ones."""

    def __init__(self, settings: Settings, store: CorpusStore, *, reload_seconds: float | None = None) -> None:
        self.settings, self.store = settings, store
        self.reload_seconds = RELOAD_SECONDS if reload_seconds is None else reload_seconds
        self._current: Generation | None = None
        self._error: str | None = "index not loaded"
        self._checked = -float("inf")  # monotonic time of the last look at the disk
        self._swap = threading.Lock()  # held only to read or replace ``_current``
        self._loading = threading.Lock()  # one loader at a time; never waited on by requests
        self._batcher: QueryBatcher | None = None
        self._reranker: Reranker | None = None

    # ---- reading (never blocks on a load) -------------------------------------------------------
    @property
    def current(self) -> Generation | None:
        with self._swap:
            return self._current

    def status(self) -> IndexStatus:
        """What is served now; looks at nothing on disk (for /health)."""
        cur = self.current
        if cur is None:
            return IndexStatus(ready=False, version=None, info={}, error=self._error)
        return IndexStatus(ready=True, version=cur.version, info=cur.index.info(), error=None)

    async def generation(self) -> Generation:
        """The generation to search. A reload that is due runs in a background thread while this request uses
        the current generation; only when there is none yet does the request wait for a look at the disk."""
        cur = self.current
        now = time.monotonic()
        if cur is None:
            if now - self._checked >= MISSING_RETRY_SECONDS:
                await anyio.to_thread.run_sync(self.refresh)
                cur = self.current
            if cur is None:
                raise ServiceUnavailable(f"search index unavailable: {self._error}")
        elif now - self._checked >= self.reload_seconds and not self._loading.locked():
            self._checked = now  # one look per interval, however many requests arrive meanwhile
            threading.Thread(target=self.refresh, name="index-reload", daemon=True).start()
        return cur

    # ---- loading --------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Open a newer generation if one is on disk and swap it in; True when swapped. Blocking (call from a
        worker thread). Returns False at once when another thread is loading."""
        if not self._loading.acquire(blocking=False):
            return False
        try:
            self._checked = time.monotonic()
            on_disk = vector_index.disk_generation(self.settings.index_dir)
            cur = self.current
            if on_disk is None:
                if cur is None:
                    self._error = (f"no vector index at {self.settings.index_dir}; ingest articles first "
                                   f"('pubmind ingest ...')")
                return False
            if cur is not None and on_disk == cur.index.generation:
                return False
            try:
                new = self._open()  # slow (reads the index files): no lock held
            except PubmindError as e:
                self._error = e.message
                log.error("cannot open the index: %s", e.message)
                return False
            with self._swap:
                self._current = new
                self._error = None
            log.info("index open: %s", new.index.info())
            return True
        finally:
            self._checked = time.monotonic()
            self._loading.release()

    def _open(self) -> Generation:
        if self._batcher is None:
            from retrieval.embed import Embedder

            self._batcher = QueryBatcher(Embedder(self.settings.embedding))
            self._reranker = load_reranker(self.settings)
        index = vector_index.VectorIndex.open(self.settings.index_dir, self.settings, self._batcher.fingerprint,
                                              readonly=True)
        return Generation(index, Searcher(self.settings, self.store, index, self._batcher, self._reranker))
