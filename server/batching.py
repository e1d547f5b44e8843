"""Micro-batching of query embeddings across concurrent requests.

Searches run in worker threads; each calls ``encode_queries([question])``. ``QueryBatcher`` queues the texts
and one encoder thread encodes everything queued (up to ``max_batch`` texts per model call), handing each
caller its rows. A lone request is encoded at once (nothing waits for a batch to fill); under load, requests
that arrive while a batch is being encoded share the next model call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

MAX_BATCH = 64


class QueryBatcher:
    """Wraps an embedder; ``encode_queries`` is batched across threads, everything else is delegated."""

    def __init__(self, embedder: Any, max_batch: int = MAX_BATCH) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[tuple[list[str], Future[np.ndarray]]] = []
        self._thread: threading.Thread | None = None
        self.calls = 0  # model calls made (for tests)

    def __getattr__(self, name: str) -> Any:  # fingerprint, dim, tokenizer, encode_passages, ...
        return getattr(self.embedder, name)

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        fut: Future[np.ndarray] = Future()
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="query-embedder", daemon=True)
                self._thread.start()
            self._pending.append((list(texts), fut))
            self._cond.notify()
        return fut.result()

    def _take(self) -> list[tuple[list[str], Future[np.ndarray]]]:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            batch: list[tuple[list[str], Future[np.ndarray]]] = []
            n = 0
            while self._pending and (not batch or n + len(self._pending[0][0]) <= self.max_batch):
                item = self._pending.pop(0)
                batch.append(item)
                n += len(item[0])
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                vecs = self.embedder.encode_queries([t for texts, _ in batch for t in texts])
            except BaseException as e:  # every waiting caller gets the error; the thread keeps serving
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            self.calls += 1
            start = 0
            for texts, fut in batch:
                fut.set_result(vecs[start:start + len(texts)])
                start += len(texts)
