"""Indexer: applies Article/Deletion streams to the corpus store and the vector index, resumably.

Invariant (crash safety): a chunk is marked ``indexed`` in the store only after an index save that
contains its vector, and a removed chunk id leaves the store's removal queue only after an index save
without it. So after a crash anywhere, the last saved index + the store describe a state that the next
``sync()`` completes (re-embedding at most the chunks of one unsaved checkpoint).
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Any, Protocol, cast

import msgspec
import numpy as np
from tqdm import tqdm

from pubmind.errors import Conflict, IndexMismatch
from pubmind.records import Article, Deletion
from pubmind.settings import Settings
from retrieval.chunking import Chunk, Chunker
from retrieval.index import VectorIndex, all_faiss_threads, faiss_threads
from retrieval.store import ApplyResult, CorpusStore

log = logging.getLogger("pubmind.indexer")


class EmbedderLike(Protocol):
    tokenizer: Any
    dim: int

    @property
    def fingerprint(self) -> dict[str, Any]: ...

    def encode_passages(self, texts: list[str]) -> np.ndarray: ...


class SyncStats(msgspec.Struct, kw_only=True):
    embedded: int = 0  # chunk vectors added to the index
    removed: int = 0  # vectors removed (deleted or replaced chunks)
    saves: int = 0  # index checkpoints
    seconds: float = 0.0
    embed_seconds: float = 0.0  # in the encoder
    index_seconds: float = 0.0  # adding vectors to the index (and IVF-PQ training when it happens)
    save_seconds: float = 0.0  # index checkpoints + marking their chunks indexed
    left_pending: int = 0  # embedded, but written again by apply() meanwhile (sync_async): for the next sync
    marks_queued: int = 0  # background checkpoints whose marks the store's next transaction recorded

    def __iadd__(self, o: SyncStats) -> SyncStats:
        for f in self.__struct_fields__:
            setattr(self, f, getattr(self, f) + getattr(o, f))
        return self


class IndexerStats(msgspec.Struct, kw_only=True):
    records: int = 0
    store_seconds: float = 0.0  # store transactions (records, chunks, FTS5; chunking unless prechunked)
    apply: ApplyResult = msgspec.field(default_factory=ApplyResult)
    sync: SyncStats = msgspec.field(default_factory=SyncStats)

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


Prechunked = tuple[Article, list[Chunk]]  # an article with the chunks a Chunker with these settings gave it


class _ChunkLookup:
    """ChunkerLike over chunks made elsewhere (parallel parse workers); keyed by the article object, so
    a PMID seen twice in one batch (two versions) gets each version's own chunks."""

    def __init__(self, chunker: Chunker, made: dict[int, list[Chunk]]) -> None:
        self.chunker, self.made = chunker, made  # id(article) -> chunks

    def chunk_many(self, articles: Sequence[Article]) -> list[list[Chunk]]:
        todo = [a for a in articles if id(a) not in self.made]
        extra = iter(self.chunker.chunk_many(todo) if todo else [])
        return [self.made[id(a)] if id(a) in self.made else next(extra) for a in articles]


CHUNKING_META = "chunking"
PAGE_MIN = 16_384  # chunk texts per encode() call, at least
CHECKPOINT_GROWTH = 0.1


class Indexer:
    """The single writer of ``settings.corpus_db`` + ``settings.index_dir`` (a file lock enforces it)."""

    def __init__(self, settings: Settings, embedder: EmbedderLike | None = None, *,
                 allow_rechunk: bool = False) -> None:
        """``allow_rechunk``: open a store chunked with other settings; call ``rechunk()`` before writing."""
        self._own_embedder = embedder is None
        if embedder is None and settings.ingest.executor == "ray":
            from retrieval.distributed import RayEmbedder

            embedder = RayEmbedder(settings)
        elif embedder is None:
            from retrieval.embed import Embedder

            embedder = Embedder(settings.embedding)
        self.settings, self.embedder = settings, embedder
        self.totals = IndexerStats()  # everything this Indexer applied and synced (per-stage seconds)
        self._bg: threading.Thread | None = None  # sync_async()'s thread
        self._bg_stats, self._bg_error = SyncStats(), cast(BaseException | None, None)  # since wait_sync()
        self._sync_lock = threading.Lock()  # one sync() at a time (a direct call waits for the background one)
        self._stop = threading.Event()  # ends a sync at its next page (wait_sync(stop=True), close())
        self._widen = threading.Event()  # the background sync may use every core from its next page on
        settings.home.mkdir(parents=True, exist_ok=True)
        self._lockf = open(settings.home / "indexer.lock", "w")  # noqa: SIM115 (held until close())
        try:
            fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockf.close()
            raise Conflict(f"another indexer is writing {settings.home} (lock {settings.home / 'indexer.lock'})") from None
        try:
            self.store = CorpusStore(settings.corpus_db)
            self.needs_rechunk = self._check_chunking(allow_rechunk)
            self.chunker = Chunker(embedder.tokenizer, settings.chunking)
            fresh = disk_has_no_index(settings)
            self.index = VectorIndex.open(settings.index_dir, settings, embedder.fingerprint,
                                          check_chunking=not self.needs_rechunk)
            if fresh:
                self.store.reset_indexed()  # index (re)created: every stored chunk must be embedded again
                self.index.save()  # readers can open an (empty) index from now on
            elif len(self.index) and not self.store.has_chunks():
                raise IndexMismatch(
                    f"index {settings.index_dir} holds {len(self.index)} vectors but the corpus store "
                    f"{settings.corpus_db} has no chunks: they belong to another store; delete the index "
                    f"(retrieval.indexer.reset_index) to rebuild it", param="index_dir")
        except BaseException:
            self.close()
            raise

    def _chunking_key(self) -> str:
        return json.dumps({"chunking": self.settings.chunking.model_dump(),
                           "tokenizer": self.embedder.fingerprint["model"]}, sort_keys=True)

    def _check_chunking(self, allow_rechunk: bool) -> bool:
        """True if the stored chunks were made with other chunking settings (and that is allowed)."""
        key, stored = self._chunking_key(), self.store.get_meta(CHUNKING_META)
        if stored is None:
            self.store.set_meta(CHUNKING_META, key)
        elif stored != key and not allow_rechunk:
            raise IndexMismatch(
                f"corpus store {self.settings.corpus_db} was chunked with {stored}, the current settings give "
                f"{key}; run Indexer(..., allow_rechunk=True).rechunk() (or restore the settings)", param="chunking")
        return stored is not None and stored != key

    def close(self) -> None:
        if self._bg is not None:
            self._stop.set()  # the background sync ends at its next page ...
            self._bg.join()  # ... never close the store under it
        if hasattr(self, "store"):
            self.store.close()
        if self._own_embedder and hasattr(self.embedder, "close"):
            self.embedder.close()  # RayEmbedder: its actors
        if not self._lockf.closed:
            fcntl.flock(self._lockf, fcntl.LOCK_UN)
            self._lockf.close()

    def __enter__(self) -> Indexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing --------------------------------------------------------------------------------
    def apply(self, records: Iterable[Article | Deletion | Prechunked], progress: bool = True,
              batch_size: int = 4000, sync: bool = True) -> IndexerStats:
        """Stream records into the store, ``batch_size`` per transaction, syncing the index whenever
        ``index.save_every`` chunks are pending and at the end (unless ``sync=False``). A ``Prechunked``
        item brings its chunks (made by ``ingest.parallel`` workers with the same chunking settings)."""
        assert not self.needs_rechunk, "call rechunk() first: the stored chunks use other chunking settings"
        stats = IndexerStats()
        buf: list[Article | Deletion] = []
        made: dict[int, list[Chunk]] = {}  # id(article) -> its chunks, for Prechunked items in buf
        pending = 0

        def flush() -> None:
            nonlocal pending, buf, made
            t = time.perf_counter()
            r = self.store.apply(buf, _ChunkLookup(self.chunker, made) if made else self.chunker)
            stats.store_seconds += time.perf_counter() - t
            self.totals.store_seconds += time.perf_counter() - t
            self.totals.records += len(buf)
            stats.apply += r
            stats.records += len(buf)
            pbar.update(len(buf))
            buf, made = [], {}
            pending += r.chunks_added
            if sync and pending >= self.settings.index.save_every:
                stats.sync += self.sync(progress=progress)
                pending = 0

        with tqdm(desc="apply", unit="rec", disable=not progress) as pbar:
            for item in records:
                if isinstance(item, tuple):
                    made[id(item[0])] = item[1]
                    item = item[0]
                buf.append(item)
                if len(buf) >= batch_size:
                    flush()
            if buf:
                flush()
        if sync:
            stats.sync += self.sync(progress=progress)
        return stats

    def sync(self, progress: bool = True) -> SyncStats:
        """Bring the index up to the store: drop removed ids, embed pending chunks, checkpoint every
        ``checkpoint_interval()`` vectors, mark chunks indexed after each save."""
        with self._sync_lock:
            return self._sync(progress)

    def _sync(self, progress: bool) -> SyncStats:
        t0 = time.perf_counter()
        st = SyncStats()
        removed_seq = self.store.write_seq()  # before each read: see CorpusStore.mark_indexed
        removed = self.store.removed_pending()
        if len(removed):
            st.removed += self.index.remove(removed)
        total = self.store.count_pending()
        if total == 0 and len(removed) == 0:
            return st
        # Texts per encode() call: sentence-transformers sorts each call by length, so big pages pad
        # little (bare-encode speed); 16k texts ~ 25 MB of text + 25 MB of vectors, whatever the corpus.
        page = max(PAGE_MIN, self.settings.embedding.batch_size * 32)
        unsaved: list[np.ndarray] = []
        seqs: list[np.ndarray] = []  # per unsaved id: write_seq() before its page was read
        n_unsaved, after = 0, -1
        dirty = len(removed) > 0  # the index changed since its last save

        def checkpoint(last: bool) -> None:
            """Save the index, then mark what it holds indexed in the store. A background sync queues the mark
            for the store's next transaction (``CorpusStore.queue_mark``): it does not wait for an apply() in
            progress, whose commit may be merging FTS5 segments for seconds. Its last checkpoint waits."""
            nonlocal removed, unsaved, seqs, n_unsaved, dirty
            t = time.perf_counter()
            if dirty:
                self.index.save()
                st.saves += 1
            n_unsaved, dirty = 0, False
            args = (np.concatenate(unsaved) if unsaved else np.zeros(0, np.int64), removed,
                    np.concatenate(seqs) if seqs else np.zeros(0, np.int64), removed_seq)
            if last or threading.current_thread() is not self._bg:
                st.left_pending += self.store.mark_indexed(*args) + self.store.take_marks_skipped()
            else:
                self.store.queue_mark(*args)
                st.marks_queued += 1
            st.save_seconds += time.perf_counter() - t
            removed, unsaved, seqs = removed[:0], [], []

        widened = False
        with tqdm(total=total, desc="embed", unit="chunk", disable=not progress) as pbar:
            while not self._stop.is_set():
                if not widened and self._widen.is_set() and threading.current_thread() is self._bg:
                    all_faiss_threads()
                    widened = True
                seq = self.store.write_seq()  # before the read
                rows = self.store.pending_chunks(min(page, self.checkpoint_interval() - n_unsaved), after)
                if not rows:
                    break
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                seqs.append(np.full(len(ids), seq, np.int64))
                t = time.perf_counter()
                vecs = self.embedder.encode_passages([r[1] for r in rows])
                t1 = time.perf_counter()
                self.index.add(ids, vecs)  # replaces any vector already stored under these ids
                st.embed_seconds += t1 - t
                st.index_seconds += time.perf_counter() - t1
                unsaved.append(ids)
                n_unsaved += len(ids)
                dirty = True
                st.embedded += len(ids)
                after = int(ids[-1])
                pbar.update(len(ids))
                if n_unsaved >= self.checkpoint_interval():
                    checkpoint(last=False)
        if not self._stop.is_set():  # stopped: left pending, for the next sync
            checkpoint(last=True)  # also records the marks queued before
        st.seconds = time.perf_counter() - t0
        self.totals.sync += st
        return st

    def sync_async(self, faiss_threads_n: int | None = None) -> bool:
        """Start ``sync()`` on a background thread and return: apply() goes on meanwhile (store writes and
        FTS5 in this thread; the encoder, index adds and saves in that one; SQLite and FAISS release the
        GIL). Chunks written again while they are being embedded stay pending (``CorpusStore.mark_indexed``),
        so the crash-safety invariant holds. False (nothing started) if one is still running: it takes up
        what was committed meanwhile before it ends, or the next call does. A failure is raised by the next
        call, or by ``wait_sync()``. ``faiss_threads_n``: the sync thread's OpenMP threads (its own)."""
        if self._bg is not None:
            if self._bg.is_alive():
                return False
            self._bg.join()
            self._raise_bg()
        self.store.track_writes(True)

        def run() -> None:
            try:
                with faiss_threads(faiss_threads_n) if faiss_threads_n else nullcontext():
                    st = self.sync(progress=False)
                self._bg_stats += st
                log.info("sync (background): %d chunks embedded, %d vectors removed, %d saves in %.1f s",
                         st.embedded, st.removed, st.saves, st.seconds)
            except BaseException as e:  # raised in the writer's thread by _raise_bg()
                self._bg_error = e

        self._bg = threading.Thread(target=run, name="pubmind-sync", daemon=True)
        self._bg.start()
        return True

    def wait_sync(self, stop: bool = False) -> SyncStats:
        """Wait for ``sync_async()``'s thread; returns what it synced since the last wait (raises its error).
        ``stop``: end it at its next page (what it has not saved stays pending), e.g. when the ingest failed."""
        if self._bg is not None:
            if stop:
                self._stop.set()
            self._widen.set()  # the caller only waits: the background sync's FAISS work gets every core
            self._bg.join()
            self._bg = None
        self._stop.clear()
        self._widen.clear()
        try:  # a sync stopped early leaves its checkpoints' marks queued; while writes are still tracked
            self.store.record_queued_marks()
        finally:
            self.store.track_writes(False)
        self._raise_bg()
        st, self._bg_stats = self._bg_stats, SyncStats()
        return st

    def abandon_sync(self) -> None:
        """For a writer that is failing: stop the background sync at its next page and wait for it; its own
        failure is logged, not raised (the writer's error is the one that matters)."""
        try:
            self.wait_sync(stop=True)
        except Exception as e:
            log.error("the background index sync failed too: %s", e)

    def _raise_bg(self) -> None:
        if self._bg_error is not None:
            e, self._bg_error = self._bg_error, None
            raise e

    def checkpoint_interval(self) -> int:
        """Vectors between index saves: ``index.save_every``, or ``CHECKPOINT_GROWTH`` of the index if
        larger. Flat and IVF-PQ saves append a segment (O(new vectors)); HNSW saves rewrite the whole graph,
        so a fixed interval would make a full-PubMed HNSW build write O(N^2) bytes; a proportional one keeps
        it O(N), keeps the segment count logarithmic, and a crash re-embeds at most that share."""
        return max(self.settings.index.save_every, int(CHECKPOINT_GROWTH * len(self.index)))

    def rechunk(self, progress: bool = True) -> IndexerStats:
        """Re-chunk every stored article with the current settings (only changed chunk texts are
        re-embedded), then record the new chunking configuration and sync."""
        stats = IndexerStats()
        with tqdm(desc="rechunk", unit="rec", disable=not progress) as pbar:
            for batch in self.store.iter_articles():
                stats.apply += self.store.apply(batch, self.chunker, force=True)
                stats.records += len(batch)
                pbar.update(len(batch))
        self.store.set_meta(CHUNKING_META, self._chunking_key())
        self.needs_rechunk = False
        stats.sync += self.sync(progress=progress)
        if stats.sync.saves == 0:
            self.index.save()  # record the new chunking in the manifest even if no text changed
        return stats

    def stats(self) -> dict[str, Any]:
        return {**self.store.stats(), "index": self.index.info()}


def disk_has_no_index(settings: Settings) -> bool:
    return not (settings.index_dir / "manifest.json").exists()


def reset_index(settings: Settings) -> None:
    """Delete the vector index folder (e.g. after an ``IndexMismatch``); the next ``Indexer`` re-embeds
    every stored chunk. Must not run while an Indexer is open."""
    if settings.index_dir.exists():
        shutil.rmtree(settings.index_dir)
