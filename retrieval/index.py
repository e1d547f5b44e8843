"""Self-describing FAISS vector index folder.

Layout of ``settings.index_dir`` (``g`` = save generation; the manifest names the live files):
  manifest.json          fingerprint, dim, metric, normalisation, chunking, kind + params, counts, generation,
                         ``segments`` (slots per segment, in order)
  index.g000007.faiss    one segment: the FAISS index of the slots added between two saves; the segments
                         merged in order make the searched index, whose labels are *slots* 0..slots-1
  ids.g000007.npy        (segment slots,) int64 slot -> chunk id, beside its segment
  alive.g000007.npy      (slots,) bool, False = tombstone (deleted/replaced chunk)
  vectors.<random>.f16   ivfpq only: (slots, dim) float16 exact vectors, append-only between rebuilds;
                         used to train, to rebuild and to re-rank (``pq_refine``) without re-embedding
Deletes are tombstones for every kind (FAISS HNSW cannot remove); searches exclude them with an
``IDSelectorBitmap``; a save rebuilds the index when tombstones exceed ``compact_fraction`` of slots.
Saves are append-only for flat and IVF-PQ: a save writes one new segment (the vectors added since the
last save) and the alive bitmap (1 byte per slot), not the whole index. Small segments are merged by
tiers: once ``MERGE_RUN`` segments smaller than ``merge_below`` trail the index, a save writes them (with
its new vectors) as one segment, read back one at a time. Segments that size are final, so a vector is
rewritten a few times, not at every merge, and a merge holds at most ~``merge_below`` vectors. A whole
index is written as one segment after a rebuild or training (compaction), and at every HNSW save (graphs
cannot be merged). Saves write new files (temp + fsync + rename), then the manifest the same way, then
delete files no manifest names: a crash at any point leaves the previous generation intact.

A trained IVF-PQ writer is *lean*: it keeps only the unsaved segment (the tail) and the slot bookkeeping
(ids, alive, id lookup: 25 B per vector) in memory, not the saved segments' codes (56 B per vector at
pq_m 48), so its RAM does not grow with the index's codes. Its first search loads the saved segments, as
a reader does; the next save drops them again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from pubmind.durable import fsync_dir, write_atomic
from pubmind.errors import ConfigError, IndexMismatch, InvalidInput, ServiceUnavailable
from pubmind.settings import IndexSettings, Settings

log = logging.getLogger("pubmind.ingest")
FORMAT = 2  # 2: segments; format 1 (one index/ids file) is read as one segment
MERGE_RUN = 16  # trailing small segments that a save merges into one
MERGE_MIN = 1_000_000  # segments of at least this many vectors are final (never merged again) ...
MERGE_PER_CELL = 256  # ... or of this many per IVF cell, if more: each segment file holds the quantizer
MANIFEST = "manifest.json"
COMPACT_FRACTION = 0.2  # rebuild on save when tombstones exceed this share of slots
EXACT_MAX = 20_000  # filtered searches over at most this many vectors are exact (brute force)
BLOCK = 65_536  # vectors per block when brute-forcing
REBUILD_BLOCK = 16_384  # vectors per block when rebuilding (25 MiB of float32 at dim 384)
READ_WINDOW = 32_768  # float16 rows per file read when rebuilding (24 MiB at dim 384)
MIN_PER_CELL = 39  # FAISS: k-means wants at least 39 training vectors per centroid
TRAIN_PER_CELL = 64  # training sample size per IVF cell (capped by the vectors present)
TRAIN_MIN_SAMPLE = 256 * 64  # training sample size at least (PQ: 64 vectors per code of a sub-quantiser)
# Files this index writes: generation files, the float16 side file, and write_atomic's temp files.
_OWN_FILE = re.compile(r"^(index|ids|alive)\.g\d{6}\.(faiss|npy)$|^vectors\.[0-9a-f]{12}\.f16$|"
                       r"^\.((index|ids|alive)\.g\d{6}\.(faiss|npy)|manifest\.json)\..*\.tmp$")



@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """FAISS's OpenMP threads limited to ``n`` inside the block (process-wide; restored after). A writer
    sharing the cores with parse workers uses the cores they leave: OpenMP threads that outnumber free
    cores spin and wait (IVF-PQ adds measured 1.6x slower with 2 threads beside 2 busy processes)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def all_faiss_threads() -> None:
    """FAISS's OpenMP threads in the calling thread (OpenMP keeps the setting per thread): every core this
    process may run on."""
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))


def target_nlist(n: int) -> int:
    """IVF cells for an index of ``n`` vectors: FAISS's guideline is 4*sqrt(N) .. 16*sqrt(N); we take the
    power of two nearest 8*sqrt(N), i.e. 5.7-11.3*sqrt(N) (1e6 -> 8192, 1e8 -> 65536)."""
    return 2 ** round(math.log2(8 * math.sqrt(max(n, 1))))


def choose_nlist(expected: int, available: int) -> int:
    """IVF cells for an index expected to hold ``expected`` vectors (or ``available``, if more), trained
    on the ``available`` ones: ``target_nlist``, capped so every cell gets ``MIN_PER_CELL`` of them."""
    return max(1, min(target_nlist(max(expected, available)), available // MIN_PER_CELL))


def train_at(s: IndexSettings) -> int:
    """Vectors an IVF-PQ index waits for before training: ``train_min``, or enough to train the nlist
    that ``expected_vectors`` calls for (``MIN_PER_CELL`` per cell), whichever is larger."""
    if s.expected_vectors <= 0 or s.ivf_nlist:
        return s.train_min
    return max(s.train_min, MIN_PER_CELL * target_nlist(s.expected_vectors))


def _structural(settings: Settings) -> dict[str, Any]:
    """Index parameters that the stored index depends on (search-time ones are read from settings)."""
    s = settings.index
    if s.kind == "hnsw":
        return {"hnsw_m": s.hnsw_m, "hnsw_ef_construction": s.hnsw_ef_construction}
    if s.kind == "ivfpq":
        return {"ivf_nlist": s.ivf_nlist, "pq_m": s.pq_m, "pq_nbits": 8}
    return {}


def _heap_trimmer() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: hand the free pages inside the heap back to the system (None where the C
    library has no such call). A growing IVF index reallocates each inverted list as it doubles; the freed
    blocks stay in the heap, ~60 B per vector added (measured: RSS grew 156 B per vector, 96 with glibc
    mapping blocks over 16 KiB separately, against 81 B of arrays)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


_trim_heap = _heap_trimmer()


def _kmeans(cp: faiss.ClusteringParameters, x: np.ndarray, k: int) -> np.ndarray:
    """(k, dim) centroids of (n, dim) ``x`` by FAISS's k-means with the IVF's parameters ``cp``, run one
    iteration per call (each starts from the last one's centroids: the same centroids as one call of
    ``cp.niter`` iterations) so that progress can be shown: at nlist 65,536 on 2.6M vectors an iteration
    takes minutes even on 16 cores."""
    assert cp.nredo == 1, f"stepwise k-means needs nredo 1, got {cp.nredo}"
    niter, cp.niter = cp.niter, 1
    try:
        clus = faiss.Clustering(x.shape[1], k, cp)  # copies cp
    finally:
        cp.niter = niter
    index = faiss.IndexFlatIP(x.shape[1])
    t0 = time.perf_counter()
    for it in tqdm(range(niter), desc="train IVF-PQ (k-means)", unit="iteration", disable=len(x) * k < 1 << 30):
        index.reset()
        clus.train(x, index)
        log.info("index: k-means iteration %d/%d (%d centroids, %d vectors, %.1f s)", it + 1, niter, k, len(x),
                 time.perf_counter() - t0)
    return faiss.vector_to_array(clus.centroids).reshape(k, x.shape[1])


def _sa_encode(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """``index.sa_encode(x)``: (n, list number + PQ code) uint8 codes, ready for ``add_sa_codes``. For an
    IVF-PQ on residuals with 8-bit codes the PQ step goes through FAISS's assign-index path (each
    sub-quantizer's nearest centroid by a flat L2 search, BLAS) instead of its per-vector encoder: 26.6 against
    30.7 us per vector with the coarse assignment, at nlist 2048 and pq_m 48 (8-d sub-vectors). A sub-vector
    (nearly) equidistant from two centroids may get the other one (1 row in ~30k differs, equally near)."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index)) if isinstance(index, faiss.IndexIVF) else None
    if not (isinstance(ivf, faiss.IndexIVFPQ) and ivf.by_residual and ivf.pq.nbits == 8):
        return index.sa_encode(x)
    n, pq, nb = len(x), ivf.pq, ivf.coarse_code_size()  # type: ignore[attr-defined]  # not in faiss's stubs
    lists = ivf.quantizer.assign(x, 1).reshape(n)  # (n,) int64: the IVF cell of each vector
    residuals = np.empty_like(x)  # (n, d) float32
    ivf.quantizer.compute_residual_n(n, faiss.swig_ptr(x), faiss.swig_ptr(residuals), faiss.swig_ptr(lists))
    out = np.empty((n, nb + pq.code_size), np.uint8)
    codes = np.empty((n, pq.code_size), np.uint8)
    flat = faiss.IndexFlatL2(pq.dsub)  # filled with each sub-quantizer's centroids in turn
    pq.assign_index = flat
    try:
        pq.compute_codes_with_assign_index(faiss.swig_ptr(residuals), faiss.swig_ptr(codes), n)
    finally:
        pq.assign_index = None  # not owned by the PQ: never leave it pointing at a freed index
    out[:, :nb] = lists.astype("<i8").view(np.uint8).reshape(n, 8)[:, :nb]  # FAISS's little-endian list number
    out[:, nb:] = codes
    return out


class VectorIndex:
    """Id-mapped FAISS index over chunk ids. Use ``open``; one writer process, any number of readers
    (readers call ``reload()`` to pick up a newer generation)."""

    def __init__(self, folder: Path, settings: Settings, fingerprint: dict[str, Any], readonly: bool) -> None:
        self.folder = folder
        self.settings = settings
        self.fingerprint = dict(fingerprint)
        self.readonly = readonly
        self.kind = settings.index.kind
        self.dim = int(fingerprint["dim"])
        if self.kind == "ivfpq" and self.dim % settings.index.pq_m:
            raise ConfigError(f"index.pq_m={settings.index.pq_m} must divide the embedding dimension {self.dim}",
                              param="index.pq_m")
        self.generation = 0
        self.created_at = datetime.now(UTC).isoformat()
        self.trained = False  # ivfpq: IVF-PQ trained (before: exact flat)
        self.nlist: int | None = None
        self._index: faiss.Index | None = self._empty_base()  # None: a lean writer (the module's docstring)
        self._ids = np.zeros(0, np.int64)  # slot -> chunk id (capacity >= _n)
        self._alive = np.zeros(0, bool)  # slot -> not tombstoned
        self._n = 0  # slots used
        self._dead = 0
        self._segments: list[tuple[str, str, int]] = []  # saved (index file, ids file, slots), in slot order
        self._saved = 0  # slots in saved segments
        self._whole = False  # slots renumbered or structure changed since the last save: write one segment
        self._tail: faiss.Index | None = None  # flat/ivfpq: the vectors added since the last save
        self._template: faiss.Index | None = None  # ivfpq: empty trained structure for new tails
        self._vec_file: str | None = None  # ivfpq: name of the float16 side file
        self._vec_map: np.memmap | None = None
        self._files: dict[str, str] = {}
        self._check_chunking = True
        self._reset_lookup()

    # ---- opening / saving -----------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, settings: Settings, fingerprint: dict[str, Any], *,
             readonly: bool = False, check_chunking: bool = True) -> VectorIndex:
        """Open the index in ``folder`` (a writer creates an empty one if there is none). Raises
        ``IndexMismatch`` if it was built with another embedder, chunking or index structure
        (``check_chunking=False``: the Indexer is re-chunking; the next save records the new chunking)."""
        folder = Path(folder)
        self = cls(folder, settings, fingerprint, readonly)
        self._check_chunking = check_chunking
        if not (folder / MANIFEST).exists():
            if readonly:
                raise ServiceUnavailable(f"no vector index at {folder} (manifest.json missing); ingest first")
            folder.mkdir(parents=True, exist_ok=True)
            self._tail = self._empty_tail()
            return self
        self._load_retrying()
        if not readonly:
            self._cleanup()
            self._truncate_vectors()
        return self

    def _expected(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "kind": self.kind,
            "params": _structural(self.settings),
            "chunking": self.settings.chunking.model_dump(),
        }

    def _load_retrying(self) -> None:
        for attempt in range(5):  # a reader can race a writer deleting the previous generation
            try:
                return self._load()
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.2)

    def _load(self) -> None:
        m = json.loads((self.folder / MANIFEST).read_text())
        if m.get("format") not in (1, FORMAT):
            raise IndexMismatch(f"index {self.folder}: manifest format {m.get('format')!r}, expected 1 or {FORMAT}")
        for key, want in self._expected().items():
            if m.get(key) != want and (key != "chunking" or self._check_chunking):
                raise IndexMismatch(
                    f"index {self.folder} was built with {key}={json.dumps(m.get(key), sort_keys=True)} but the "
                    f"current settings give {key}={json.dumps(want, sort_keys=True)}; rebuild the index "
                    f"(delete {self.folder} and re-sync) or restore the settings", param=key)
        files = m["files"]
        if m["format"] == 1:
            segments = [(files["index"], files["ids"], int(m["slots"]))]
        else:
            segments = [(files[f"index.{i}"], files[f"ids.{i}"], int(n)) for i, n in enumerate(m["segments"])]
        self._template = None
        lean = not self.readonly and self.kind == "ivfpq" and bool(m["trained"]) and bool(segments)
        if lean:  # the writer: the structure only, not the saved codes
            self._template = _ivf_template(_read_faiss(self.folder / segments[0][0], faiss.IO_FLAG_MMAP_IFC))
        index = None if lean else self._read_segments(segments)
        ids = np.concatenate([np.zeros(0, np.int64), *(np.load(self.folder / f) for _, f, _ in segments)])
        alive = np.load(self.folder / files["alive"])
        n = int(m["slots"])
        ntotal = sum(k for _, _, k in segments) if index is None else index.ntotal
        assert ntotal == n == len(ids) == len(alive), (
            f"index {self.folder}: inconsistent generation {m['generation']}: ntotal={ntotal}, "
            f"slots={n}, ids={len(ids)}, alive={len(alive)}")
        self._index, self._ids, self._alive, self._n = index, ids, alive, n
        self._dead = n - int(alive.sum())
        self.generation = int(m["generation"])
        self.created_at = m["created_at"]
        self.trained, self.nlist = bool(m["trained"]), m["nlist"]
        self._vec_file = files.get("vectors")
        self._vec_map = None
        self._files = files
        self._segments, self._saved, self._whole = segments, n, False
        self._tail = None if self.readonly else self._empty_tail()
        self._configure()
        self._reset_lookup()
        if _trim_heap is not None:  # segments read and freed while merging, the lookup's temporaries
            _trim_heap()

    def _read_segments(self, segments: list[tuple[str, str, int]], extra: faiss.Index | None = None) -> faiss.Index:
        """The segments' indexes (and ``extra``, an unsaved one that follows them) merged in order, one segment
        in memory at a time; labels count from the first segment's first slot."""
        if not segments and extra is None:  # saved empty
            return self._empty_base()
        index: faiss.Index | None = None
        total = sum(n for _, _, n in segments) + (extra.ntotal if extra is not None else 0)
        start = 0
        parts: list[tuple[str | None, int]] = [(f, n) for f, _, n in segments]
        if extra is not None:
            parts.append((None, int(extra.ntotal)))
        for seg_file, seg_slots in parts:
            seg = _read_faiss(self.folder / seg_file) if seg_file is not None else extra
            assert seg is not None and seg.ntotal == seg_slots, f"index {self.folder}: {seg_file} is not {seg_slots} vectors"
            if len(parts) == 1:
                index = seg
            elif isinstance(seg, faiss.IndexFlat):  # copy into one preallocated array (merge_from regrows it)
                if index is None:
                    index = faiss.IndexFlatIP(self.dim)
                    index.codes.resize(total * self.dim * 4)
                    index.ntotal = total
                _flat_view(index, total)[start : start + seg_slots] = _flat_view(seg, seg_slots)
            elif index is None:
                index = seg
                if isinstance(seg, faiss.IndexIVF):  # each list sized once: merges then append in place
                    totals = self._list_totals(segments[1:]) + _list_sizes(_invlists(seg))
                    if extra is not None:
                        totals += _list_sizes(_invlists(extra))
                    _reserve_lists(_invlists(seg), totals)
            else:  # IVF lists store labels: shift the segment's 0.. to its slots
                index.merge_from(seg, start)
            start += seg_slots
        assert index is not None, f"index {self.folder}: manifest lists no segment"
        return index

    def _list_totals(self, segments: list[tuple[str, str, int]]) -> np.ndarray:
        """(nlist,) entries per inverted list over all the IVF segments, read through memory maps (the
        lists' data is not loaded)."""
        totals: np.ndarray | int = 0
        for seg_file, _, _ in segments:
            seg = _read_faiss(self.folder / seg_file, faiss.IO_FLAG_MMAP_IFC)
            totals = totals + _list_sizes(_invlists(seg))
            del seg
        return np.asarray(totals, np.int64)

    def _configure(self) -> None:
        s = self.settings.index
        if isinstance(self._index, faiss.IndexHNSW):
            self._index.hnsw.efSearch = s.hnsw_ef_search
        elif self.kind == "ivfpq" and self.trained and self._index is not None:
            faiss.extract_index_ivf(self._index).nprobe = s.ivf_nprobe

    def reload(self) -> bool:
        """Reader: load the newest generation if the writer saved one since; True if reloaded.
        Not atomic for concurrent searches on this object: servers should open a new VectorIndex and
        swap the reference instead."""
        g = disk_generation(self.folder)
        if g is None or g == self.generation:
            return False
        self._load_retrying()
        return True

    def save(self) -> None:
        """Checkpoint atomically as generation + 1 (compacts first if tombstones are many)."""
        assert not self.readonly, "save() on a read-only VectorIndex"
        if self._n and self._dead > COMPACT_FRACTION * self._n:
            self._rebuild(self._fresh_like())
        g = self.generation + 1
        if self._whole or self._tail is None:  # compaction (or HNSW): one segment
            assert self._index is not None, "a whole save without the whole index in memory"
            segments = [self._write_segment(g, self._index, 0)] if self._n else []
        else:
            segments = self._append(g, self._tail)
        files = {"alive": f"alive.g{g:06d}.npy"}
        for i, (seg_file, ids_file, _) in enumerate(segments):
            files[f"index.{i}"], files[f"ids.{i}"] = seg_file, ids_file
        write_atomic(self.folder / files["alive"], lambda p: _save_npy(p, self._alive[: self._n]))
        if self._vec_file is not None:
            files["vectors"] = self._vec_file
            with open(self.folder / self._vec_file, "rb+") as f:
                os.fsync(f.fileno())
        now = datetime.now(UTC).isoformat()
        manifest = {
            "format": FORMAT, "generation": g, **self._expected(), "dim": self.dim, "metric": "inner_product",
            "normalize": bool(self.fingerprint.get("normalize")), "trained": self.trained, "nlist": self.nlist,
            "count": len(self), "slots": self._n, "tombstones": self._dead, "files": files,
            "segments": [n for _, _, n in segments],
            "created_at": self.created_at, "built_at": now,
        }
        fsync_dir(self.folder)
        write_atomic(self.folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
        fsync_dir(self.folder)
        self.generation, self._files = g, files
        self._segments, self._saved, self._whole = segments, self._n, False
        if self._template is not None and self._segments:  # trained IVF-PQ: lean from now on
            self._index = None
        self._tail = self._empty_tail()
        self._cleanup()
        if _trim_heap is not None:  # ~1 ms; at most once per save_every vectors
            _trim_heap()

    def merge_below(self) -> int:
        """Segments smaller than this (vectors) are merged by tiers; larger ones are final."""
        return max(MERGE_MIN, MERGE_PER_CELL * (self.nlist or 0))

    def _append(self, g: int, tail: faiss.Index) -> list[tuple[str, str, int]]:
        """The segments after saving ``tail`` (the slots from ``_saved`` on): appended as a new segment, or,
        with the trailing small segments once ``MERGE_RUN`` of them would trail, merged with them into one."""
        segments = list(self._segments)
        run, below = 0, self.merge_below()  # run: trailing segments still merged by tiers
        while run < len(segments) and segments[-1 - run][2] < below:
            run += 1
        if run + (self._n > self._saved) < max(MERGE_RUN, 2):
            if self._n > self._saved:
                segments.append(self._write_segment(g, tail, self._saved))
            return segments
        merged, kept = segments[len(segments) - run :], segments[: len(segments) - run]
        start = self._saved - sum(n for _, _, n in merged)
        extra = faiss.clone_index(tail) if tail.ntotal else None  # merge_from empties its argument
        log.info("index: merging %d segments (%d vectors)", len(merged) + (extra is not None), self._n - start)
        index = self._read_segments(merged, extra)
        return [*kept, self._write_segment(g, index, start)]

    def _write_segment(self, g: int, index: faiss.Index, start: int) -> tuple[str, str, int]:
        """Write ``index`` (the slots from ``start`` on) and their chunk ids as generation ``g``'s segment."""
        seg_file, ids_file = f"index.g{g:06d}.faiss", f"ids.g{g:06d}.npy"
        assert start + index.ntotal == self._n, f"segment from slot {start} has {index.ntotal} of {self._n - start}"
        write_atomic(self.folder / seg_file, lambda p: faiss.write_index(index, str(p)))
        write_atomic(self.folder / ids_file, lambda p: _save_npy(p, self._ids[start : self._n]))
        return seg_file, ids_file, int(index.ntotal)

    def _empty_tail(self) -> faiss.Index | None:
        """An empty index to collect the next segment (None for HNSW: its graph cannot be merged, so each
        save writes it whole). Trained IVF-PQ: a copy of the template's quantizer and PQ."""
        if self.kind == "hnsw":
            return None
        if self._template is None:
            return faiss.IndexFlatIP(self.dim)
        return faiss.clone_index(self._template)

    def _cleanup(self) -> None:
        """Delete files of other generations and temp files (writer only)."""
        keep = set(self._files.values())
        for p in self.folder.iterdir():
            if _OWN_FILE.match(p.name) and p.name not in keep:
                p.unlink(missing_ok=True)

    def _truncate_vectors(self) -> None:
        """Writer open: drop float16 rows appended after the last save (a crash before saving)."""
        if self._vec_file is not None:
            path = self.folder / self._vec_file
            if path.stat().st_size > self._n * self.dim * 2:
                os.truncate(path, self._n * self.dim * 2)

    # ---- structure ------------------------------------------------------------------------------
    def _empty_base(self) -> faiss.Index:
        s = self.settings.index
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = s.hnsw_ef_construction
            index.hnsw.efSearch = s.hnsw_ef_search
            return index
        return faiss.IndexFlatIP(self.dim)  # flat, and ivfpq until trained

    def _fresh_like(self) -> faiss.Index:
        """An empty index of the current structure (keeps IVF-PQ training)."""
        if self._template is not None:
            return faiss.clone_index(self._template)
        return self._empty_base()

    def _train(self) -> None:
        """ivfpq: train IVF-PQ on the stored exact vectors, then rebuild into it."""
        s = self.settings.index
        live = np.flatnonzero(self._alive[: self._n])
        nlist = s.ivf_nlist or choose_nlist(max(s.expected_vectors, len(live)), len(live))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = _ivfpq_owning(quantizer, nlist, s.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        n_sample = min(len(live), max(TRAIN_MIN_SAMPLE, nlist * TRAIN_PER_CELL))
        # (n_slots, dim) float32: the untrained index's own array. Where the sample would be every live
        # vector (the usual case), training reads that array in place, tombstones included (a few earlier
        # versions of chunks, real vectors too): at expected_vectors 1e8 it holds 2.6M vectors, 3.9 GB
        # that a copy would double. Otherwise a random sample of live vectors is copied out of it.
        flat = _flat_view(self._resident(), self._n)
        if n_sample < len(live):
            x = flat[np.sort(np.random.default_rng(0).choice(live, size=n_sample, replace=False))]
        else:
            x, n_sample = flat, self._n
        log.info("index: training IVF-PQ (nlist %d, pq_m %d) on %d vectors (%d live)", nlist, s.pq_m, n_sample, len(live))
        t0 = time.perf_counter()
        quantizer.add(_kmeans(ivf.cp, x, nlist))  # FAISS's k-means, one iteration per call, with progress
        ivf.train(x)  # the PQ only: FAISS does not train a quantizer that holds nlist centroids already
        del flat, x
        log.info("index: IVF-PQ trained in %.1f s; moving %d vectors into it", time.perf_counter() - t0, len(live))
        self.trained, self.nlist = True, nlist
        self._rebuild(ivf)

    def _rebuild(self, fresh: faiss.Index) -> None:
        """Move the live vectors (in slot order) into ``fresh``; tombstones disappear, slots renumber."""
        live = np.flatnonzero(self._alive[: self._n])
        assert fresh.ntotal == 0, "rebuild into a non-empty index"
        if isinstance(fresh, faiss.IndexIVF):  # a new structure (training) or the same one (compaction)
            self._template = _ivf_template(fresh)
        new_vec_file = _new_vec_name() if self.kind == "ivfpq" else None
        blocks = range(0, len(live), REBUILD_BLOCK)
        with open(self.folder / new_vec_file, "wb") if new_vec_file else contextlib.nullcontext() as out:
            for i in tqdm(blocks, desc=f"rebuild {self.kind} index", unit="block", disable=len(blocks) < 32):
                slots = live[i : i + REBUILD_BLOCK]
                v = self._read_rows(slots) if self.kind == "ivfpq" else self._vectors(slots)
                if isinstance(fresh, faiss.IndexIVF):
                    fresh.add_sa_codes(_sa_encode(fresh, v))
                else:
                    fresh.add(v)
                if out is not None:
                    out.write(v.astype(np.float16).tobytes())
        assert fresh.ntotal == len(live), f"rebuild added {fresh.ntotal} of {len(live)} vectors"
        self._index = fresh
        self._ids, self._alive = self._ids[live].copy(), np.ones(len(live), bool)
        self._n, self._dead = len(live), 0
        self._whole = True  # slots renumbered: the next save writes one segment
        self._tail = self._empty_tail()
        if new_vec_file:
            self._vec_file, self._vec_map = new_vec_file, None  # the old file goes at the next save's cleanup
        self._configure()
        self._reset_lookup()

    # ---- id lookup: sorted "main" map of slots below _merged + sorted cache of newer slots --------
    def _reset_lookup(self) -> None:
        live = np.flatnonzero(self._alive[: self._n])
        order = np.argsort(self._ids[live], kind="stable")
        self._main_ids, self._main_pos = self._ids[live][order], live[order]
        self._merged = self._n
        self._delta_cache: tuple[np.ndarray, np.ndarray] | None = None

    def _lookup(self, ext: np.ndarray) -> np.ndarray:
        """(m,) chunk ids -> (m,) live slots, -1 where absent or tombstoned."""
        if self._n - self._merged > max(200_000, self._n // 8):
            self._reset_lookup()
        pos = np.full(len(ext), -1, np.int64)
        for ids, slots in ((self._main_ids, self._main_pos), self._delta()):
            if len(ids) == 0:
                continue
            i = np.minimum(np.searchsorted(ids, ext), len(ids) - 1)
            hit = ids[i] == ext
            p = slots[i]
            ok = hit & self._alive[p]
            pos[ok] = p[ok]
        return pos

    def _delta(self) -> tuple[np.ndarray, np.ndarray]:
        if self._delta_cache is None:
            live = self._merged + np.flatnonzero(self._alive[self._merged : self._n])
            order = np.argsort(self._ids[live], kind="stable")
            self._delta_cache = (self._ids[live][order], live[order])
        return self._delta_cache

    # ---- vectors --------------------------------------------------------------------------------
    def _vectors(self, slots: np.ndarray) -> np.ndarray:
        """(m,) slots -> (m, dim) float32 exact vectors (ivfpq: from the float16 side file)."""
        if self.kind == "ivfpq":
            if self._vec_map is None or len(self._vec_map) < self._n:
                assert self._vec_file is not None, "ivfpq index without its float16 vector file"
                self._vec_map = np.memmap(self.folder / self._vec_file, np.float16, "r", shape=(self._n, self.dim))
            return np.asarray(self._vec_map[slots], dtype=np.float32)
        return self._resident().reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    def _read_rows(self, slots: np.ndarray) -> np.ndarray:
        """(m,) ascending slots -> (m, dim) float32 from the float16 file, read in windows of at most
        READ_WINDOW rows (not through the memory map: a rebuild reads the whole file, and mapped pages
        would count in this process's RSS, 768 B per vector)."""
        assert self._vec_file is not None, "ivfpq index without its float16 vector file"
        out = np.empty((len(slots), self.dim), np.float32)
        row = self.dim * 2  # bytes per float16 row
        with open(self.folder / self._vec_file, "rb") as f:
            i = 0
            while i < len(slots):
                lo = int(slots[i])
                j = int(np.searchsorted(slots, lo + READ_WINDOW))  # slots[i:j] lie in [lo, lo + READ_WINDOW)
                f.seek(lo * row)
                rows = int(slots[j - 1]) + 1 - lo
                buf = np.fromfile(f, np.float16, rows * self.dim).reshape(-1, self.dim)
                assert len(buf) == rows, f"{self._vec_file}: {len(buf)} of {rows} rows from row {lo} (file too short)"
                out[i:j] = buf[slots[i:j] - lo]
                i = j
        return out

    def vectors(self, chunk_ids: np.ndarray) -> np.ndarray:
        """(m, dim) float32 stored vectors of live chunk ids (KeyError naming the first missing one)."""
        pos = self._lookup(np.asarray(chunk_ids, np.int64))
        if (pos < 0).any():
            raise KeyError(f"chunk id {int(np.asarray(chunk_ids)[pos < 0][0])} is not in the index")
        return self._vectors(pos)

    # ---- writes ---------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add (n,) int64 chunk ids with (n, dim) float32 vectors; ids already present are replaced."""
        assert not self.readonly, "add() on a read-only VectorIndex"
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape != (len(ids), self.dim):
            raise InvalidInput(f"vecs shape {vecs.shape} does not match ids ({len(ids)},) x dim {self.dim}",
                               param="vecs")
        if len(np.unique(ids)) != len(ids):
            raise InvalidInput("ids contains duplicates", param="ids")
        if len(ids) == 0:
            return
        self.remove(ids)
        if self._vec_file is None and self.kind == "ivfpq":
            self._vec_file = _new_vec_name()
            (self.folder / self._vec_file).touch()
        if self._vec_file is not None:
            with open(self.folder / self._vec_file, "ab") as f:
                assert f.tell() == self._n * self.dim * 2, f"{self._vec_file} has {f.tell()} bytes, expected {self._n * self.dim * 2}"
                f.write(vecs.astype(np.float16).tobytes())
        if isinstance(self._tail, faiss.IndexIVF):
            codes = _sa_encode(self._tail, vecs)  # (n, list-number + PQ bytes): encode once, add to both
            self._tail.add_sa_codes(codes)
            if self._index is not None:  # lean writers have none
                self._index.add_sa_codes(codes)  # labels continue from ntotal (slots), as add() gives them
        else:
            assert self._index is not None, "only a trained IVF-PQ writer is lean"
            self._index.add(vecs)
            if self._tail is not None:
                self._tail.add(vecs)
        n = self._n + len(ids)
        if n > len(self._ids):
            cap = max(n, 2 * len(self._ids), 1024)
            self._ids = np.resize(self._ids, cap)
            self._alive = np.resize(self._alive, cap)
        self._ids[self._n : n] = ids
        self._alive[self._n : n] = True
        self._n = n
        self._delta_cache = None
        ntotal = self._index.ntotal if self._index is not None else self._saved + self._tail.ntotal  # type: ignore[union-attr]
        assert ntotal == self._n, f"faiss ntotal {ntotal} != slots {self._n}"
        if self.kind == "ivfpq" and not self.trained and len(self) >= train_at(self.settings.index):
            self._train()

    def remove(self, ids: np.ndarray) -> int:
        """Tombstone these chunk ids; returns how many were present."""
        assert not self.readonly, "remove() on a read-only VectorIndex"
        pos = self._lookup(np.asarray(ids, dtype=np.int64))
        pos = np.unique(pos[pos >= 0])
        self._alive[pos] = False
        self._dead += len(pos)
        return len(pos)

    # ---- reads ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n - self._dead

    def ids(self) -> np.ndarray:
        """(n,) int64 sorted live chunk ids."""
        return np.sort(self._ids[: self._n][self._alive[: self._n]])

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self._lookup(np.asarray(ids, dtype=np.int64)) >= 0

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. q (nq, dim) float32; allowed: chunk ids the results must come from
        (applied before top-k). Returns scores (nq, k) float32 and chunk ids (nq, k) int64, best first,
        padded with -inf / -1 when fewer than k live (allowed) vectors exist."""
        q = np.ascontiguousarray(np.atleast_2d(q), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise InvalidInput(f"query dimension {q.shape[1]} != index dimension {self.dim}", param="q")
        if k < 1:
            raise InvalidInput(f"k must be >= 1, got {k}", param="k")
        nq = len(q)
        cand: np.ndarray | None
        mask: np.ndarray | None
        if allowed is not None:
            cand = self._lookup(np.unique(np.asarray(allowed, dtype=np.int64)))
            cand = cand[cand >= 0]
            if len(cand) <= max(EXACT_MAX, k):
                return self._finish(*self._exact(q, k, cand))
            mask = np.zeros(self._n, bool)
            mask[cand] = True
            n_cand = len(cand)
        else:
            cand, mask, n_cand = None, (self._alive[: self._n] if self._dead else None), len(self)
            if n_cand == 0:
                return self._finish(np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64))
        bitmap = np.packbits(mask, bitorder="little") if mask is not None else None
        sel = faiss.IDSelectorBitmap(self._n, faiss.swig_ptr(bitmap)) if bitmap is not None else None
        s = self.settings.index
        refine = self.kind == "ivfpq" and self.trained and s.pq_refine
        kk = min(max(4 * k, k + 32), n_cand) if refine else min(k, n_cand)
        params = _search_params(self.kind, self.trained, sel, ef_search=max(s.hnsw_ef_search, kk),
                                nprobe=s.ivf_nprobe)
        scores, slots = self._resident().search(q, kk, params=params)
        del bitmap  # the selector pointed into it; keep it alive until here
        if refine:
            scores, slots = self._rerank(q, slots, k)
        scores, slots = _pad(scores, slots, k)
        want = min(k, n_cand)
        short = np.flatnonzero((slots >= 0).sum(axis=1) < want)
        if len(short):  # graph/IVF search missed some matches (selective filter): exact for those queries
            every = cand if cand is not None else np.flatnonzero(self._alive[: self._n])
            scores[short], slots[short] = self._exact(q[short], k, every)
        return self._finish(scores, slots)

    def _resident(self) -> faiss.Index:
        """The whole index in memory: a lean writer loads the saved segments and merges its tail in."""
        if self._index is None:
            extra = faiss.clone_index(self._tail) if self._tail is not None and self._tail.ntotal else None
            self._index = self._read_segments(self._segments, extra)
            self._configure()
        return self._index

    def ram_bytes(self) -> int:
        """Bytes held by the index's arrays: FAISS codes and labels (or float32 vectors) of the resident
        index and the tail, slot ids, alive bitmap and the id lookup."""
        def faiss_bytes(ix: faiss.Index | None) -> int:
            if ix is None:
                return 0
            per = (self.settings.index.pq_m + 8) if isinstance(ix, faiss.IndexIVF) else self.dim * 4
            return int(ix.ntotal) * per
        lookup = self._main_ids.nbytes + self._main_pos.nbytes
        return faiss_bytes(self._index) + faiss_bytes(self._tail) + self._ids.nbytes + self._alive.nbytes + lookup

    def _finish(self, scores: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = slots >= 0
        ids = np.where(ok, self._ids[np.maximum(slots, 0)] if self._n else -1, -1)
        return np.where(ok, scores, -np.inf).astype(np.float32), ids.astype(np.int64)

    def _exact(self, q: np.ndarray, k: int, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-k over these slots: scores (nq, k), slots (nq, k)."""
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_p = np.full((len(q), 0), -1, np.int64)
        for i in range(0, len(slots), BLOCK):
            block = slots[i : i + BLOCK]
            s = q @ self._vectors(block).T  # (nq, b)
            best_s = np.concatenate([best_s, s], axis=1)
            best_p = np.concatenate([best_p, np.broadcast_to(block, s.shape)], axis=1)
            if best_s.shape[1] > k:
                top = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                best_s = np.take_along_axis(best_s, top, 1)
                best_p = np.take_along_axis(best_p, top, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        return _pad(np.take_along_axis(best_s, order, 1), np.take_along_axis(best_p, order, 1), k)

    def _rerank(self, q: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-score IVF-PQ candidates (nq, kk) with exact vectors; keep the best k."""
        valid = slots >= 0
        v = self._vectors(np.where(valid, slots, 0).ravel()).reshape(*slots.shape, self.dim)
        s = np.where(valid, np.einsum("qkd,qd->qk", v, q), -np.inf).astype(np.float32)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, order, 1), np.take_along_axis(slots, order, 1)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "count": len(self), "slots": self._n, "tombstones": self._dead,
                "segments": len(self._segments),
                "generation": self.generation, "trained": self.trained, "nlist": self.nlist,
                "folder": str(self.folder)}


def _search_params(kind: str, trained: bool, sel: faiss.IDSelector | None, *, ef_search: int,
                   nprobe: int) -> faiss.SearchParameters:
    """Per-search parameters (the selector restricts results to allowed slots). faiss's stubs lack
    ``SearchParametersHNSW`` and the keyword constructors that its SWIG classes accept."""
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=ef_search, sel=sel)  # type: ignore[attr-defined]
    if kind == "ivfpq" and trained:
        return faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)  # type: ignore[call-arg]
    return faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]


def _ivfpq_owning(quantizer: faiss.Index, nlist: int, m: int, nbits: int, metric: int) -> faiss.IndexIVFPQ:
    """An IndexIVFPQ over ``quantizer`` that owns it (frees it with itself; Python no longer does)."""
    ivf = faiss.IndexIVFPQ(quantizer, quantizer.d, nlist, m, nbits, metric)
    ivf.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]  # SWIG ownership handle, not in faiss's stubs
    return ivf


def _ivf_template(index: faiss.Index) -> faiss.Index:
    """An empty IVF-PQ with ``index``'s quantizer and PQ: built, not cloned, so that ``index`` may be read
    through a memory map (its lists are not loaded) or hold millions of codes."""
    ivf = faiss.downcast_index(index)
    assert isinstance(ivf, faiss.IndexIVFPQ), f"expected an IndexIVFPQ, got {type(ivf).__name__}"
    out = _ivfpq_owning(faiss.clone_index(ivf.quantizer), ivf.nlist, ivf.pq.M, ivf.pq.nbits, ivf.metric_type)
    out.pq = ivf.pq  # a copy (SWIG assigns the struct by value)
    out.by_residual, out.is_trained = ivf.by_residual, True
    return out


def _read_faiss(path: Path, flags: int = 0) -> faiss.Index:
    """``faiss.read_index``, with a file that is not there raised as ``FileNotFoundError`` (FAISS raises a
    RuntimeError): a reader racing the writer's cleanup of an older generation retries on it."""
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as e:
        if not path.exists():
            raise FileNotFoundError(f"index segment {path} is gone (a newer generation replaced it)") from e
        raise


def _invlists(index: faiss.Index) -> faiss.InvertedLists:
    """An IVF index's inverted lists (valid while ``index`` lives)."""
    invlists = faiss.extract_index_ivf(index).invlists
    assert invlists is not None, "IVF index without inverted lists"
    return invlists


def _list_sizes(invlists: faiss.InvertedLists) -> np.ndarray:
    """(nlist,) int64 entries in each inverted list."""
    return np.fromiter((invlists.list_size(i) for i in range(invlists.nlist)), np.int64, count=invlists.nlist)


def _reserve_lists(invlists: faiss.InvertedLists, totals: np.ndarray) -> None:
    """Give each list room for ``totals[l]`` entries, keeping its own. Merging N segments into lists that
    grow by doubling left ~35% unused room plus freed blocks in the heap (a 481k-vector load: 105 B of
    FAISS memory per vector against 86 B when reserved)."""
    own = _list_sizes(invlists)
    assert (totals >= own).all(), "list totals smaller than the first segment's lists"
    for i in np.flatnonzero(totals > own):
        invlists.resize(int(i), int(totals[i]))  # room for all (new entries are overwritten by the merges)
        invlists.resize(int(i), int(own[i]))  # a vector keeps its capacity when it shrinks


def _flat_view(index: faiss.Index, n: int) -> np.ndarray:
    """(n, dim) float32 view (no copy) of an IndexFlat's vectors."""
    return faiss.rev_swig_ptr(index.get_xb(), n * index.d).reshape(n, index.d)  # type: ignore[attr-defined]  # get_xb: not in faiss's stubs


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


def _new_vec_name() -> str:
    return f"vectors.{os.urandom(6).hex()}.f16"


def _pad(scores: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad/trim (nq, m) results to (nq, k) with -inf / -1."""
    nq, m = slots.shape
    if m >= k:
        return scores[:, :k].copy(), slots[:, :k].copy()
    return (np.concatenate([scores, np.full((nq, k - m), -np.inf, np.float32)], 1),
            np.concatenate([slots, np.full((nq, k - m), -1, np.int64)], 1))


def disk_generation(folder: str | Path) -> int | None:
    """Generation of the index saved in ``folder`` (None if there is none)."""
    try:
        return int(json.loads((Path(folder) / MANIFEST).read_text())["generation"])
    except FileNotFoundError:
        return None
