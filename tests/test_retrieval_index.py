"""VectorIndex: flat / hnsw / ivfpq add, remove, search, filters before top-k, save/load, mismatch,
compaction, crash-safe saves, reader reload."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

import retrieval.index as vi
from pubmind.errors import IndexMismatch, ServiceUnavailable
from retrieval.index import VectorIndex, disk_generation
from tests.conftest import settings_at

DIM = 32
FP = {"model": "rand", "dim": DIM, "normalize": True, "max_seq_length": 128, "query_prefix": "", "passage_prefix": ""}
KINDS = ["flat", "hnsw", "ivfpq"]


def cfg(settings, kind: str, **index):
    return settings_at(settings.home, index={"kind": kind, "pq_m": 8, "hnsw_m": 16, **index})


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(1, 10**9, size=2 * n))[:n].astype(np.int64) * 1000 + 3
    assert len(ids) == n
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return ids, v / np.linalg.norm(v, axis=1, keepdims=True)


def exact(ids, vecs, q, k, allowed=None):
    m = np.isin(ids, allowed) if allowed is not None else np.ones(len(ids), bool)
    s = q @ vecs[m].T
    top = np.argsort(-s, axis=1)[:, :k]
    return ids[m][top]


@pytest.mark.parametrize("kind", KINDS)
def test_add_search_remove_readd(settings, kind) -> None:
    s = cfg(settings, kind)
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1500)
    for i in range(0, 1500, 500):  # ivfpq trains when the 1000th vector arrives (test preset)
        ix.add(ids[i : i + 500], vecs[i : i + 500])
    assert len(ix) == 1500
    assert ix.trained == (kind == "ivfpq")
    sc, got = ix.search(vecs[:100], 10)
    assert sc.shape == got.shape
    assert got.shape == (100, 10)
    assert got.dtype == np.int64
    assert sc.dtype == np.float32
    assert (np.diff(sc, axis=1) <= 1e-5).all()
    self_hit = (got[:, 0] == ids[:100]).mean()
    assert self_hit >= (1.0 if kind == "flat" else 0.95), self_hit
    truth = exact(ids, vecs, vecs[:100], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)])
    assert recall >= (1.0 if kind == "flat" else 0.8), recall
    # remove: never returned again
    gone = ids[:50]
    assert ix.remove(gone) == 50
    assert ix.remove(gone) == 0
    assert len(ix) == 1450
    _, got = ix.search(vecs[:50], 10)
    assert not np.isin(got, gone).any()
    assert not ix.contains(gone).any()
    assert ix.contains(ids[50:60]).all()
    # re-add an id with a new vector: replaced, not duplicated
    new = -vecs[60:61]
    ix.add(ids[60:61], new)
    ix.add(ids[60:61], new)
    assert len(ix) == 1450
    _, got = ix.search(new, 5)
    assert got[0, 0] == ids[60]
    assert (got[0] == ids[60]).sum() == 1
    np.testing.assert_allclose(ix.vectors(ids[60:61]), new, atol=1e-2)
    assert np.array_equal(ix.ids(), np.sort(ids[50:]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("exact_max", [20_000, 0])
def test_filter_applies_before_topk(settings, kind, exact_max, monkeypatch) -> None:
    """A selective filter still returns k hits (exact ones) whether it is brute-forced or goes through
    the FAISS selector (exact_max=0)."""
    monkeypatch.setattr(vi, "EXACT_MAX", exact_max)
    s = cfg(settings, kind)
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1500, seed=1)
    ix.add(ids, vecs)
    ix.remove(ids[:3])
    rng = np.random.default_rng(5)
    allowed = rng.choice(ids, size=25, replace=False)
    q = vecs[-5:]
    sc, got = ix.search(q, 10, allowed=allowed)
    live_allowed = allowed[~np.isin(allowed, ids[:3])]
    assert (got >= 0).all()
    assert np.isin(got, live_allowed).all()
    truth = exact(ids, vecs, q, 10, live_allowed)
    if kind == "flat" or exact_max:
        assert np.array_equal(np.sort(got, axis=1), np.sort(truth, axis=1))
    else:  # approximate search through the selector: k hits, mostly the true ones
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)]) >= 0.6
    # fewer allowed than k: all of them, padded with -1
    sc, got = ix.search(q[:1], 10, allowed=np.concatenate([ids[3:7], [123456789]]))
    assert sorted(got[0, :4]) == sorted(ids[3:7])
    assert (got[0, 4:] == -1).all()
    assert np.isinf(sc[0, 4:]).all()
    _, got = ix.search(q[:1], 10, allowed=np.array([], np.int64))
    assert (got == -1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_roundtrip_and_manifest(settings, kind) -> None:
    s = cfg(settings, kind)
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1200, seed=2)
    ix.add(ids, vecs)
    ix.remove(ids[:10])
    ix.save()
    before = ix.search(vecs[:20], 5)
    again = VectorIndex.open(s.index_dir, s, FP)
    after = again.search(vecs[:20], 5)
    assert np.array_equal(before[1], after[1])
    assert np.allclose(before[0], after[0])
    assert len(again) == 1190
    assert again.generation == 1
    assert disk_generation(s.index_dir) == 1
    m = json.loads((s.index_dir / "manifest.json").read_text())
    assert m["fingerprint"] == FP
    assert m["dim"] == DIM
    assert m["kind"] == kind
    assert m["count"] == 1190
    assert m["metric"] == "inner_product"
    assert m["normalize"] is True
    assert m["chunking"]["max_tokens"] == 128
    assert m["generation"] == 1
    assert m["built_at"]
    assert {p.name for p in s.index_dir.iterdir()} == {"manifest.json", *m["files"].values()}
    again.save()
    assert {p.name for p in s.index_dir.iterdir()} == {"manifest.json", *json.loads(
        (s.index_dir / "manifest.json").read_text())["files"].values()}  # old generation deleted


def test_mismatch_names_both_values(settings) -> None:
    s = cfg(settings, "flat")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ix.add(*data(10))
    ix.save()
    with pytest.raises(IndexMismatch, match=r'fingerprint=.*"model": "rand".*"model": "other"'):
        VectorIndex.open(s.index_dir, s, {**FP, "model": "other"})
    with pytest.raises(IndexMismatch, match=r'kind="flat".*kind="hnsw"'):
        VectorIndex.open(s.index_dir, cfg(settings, "hnsw"), FP)
    other_chunking = settings_at(settings.home, chunking={"max_tokens": 200})
    with pytest.raises(IndexMismatch, match="chunking"):
        VectorIndex.open(s.index_dir, other_chunking, FP)
    with pytest.raises(ServiceUnavailable, match="no vector index"):
        VectorIndex.open(settings.home / "nowhere", s, FP, readonly=True)


@pytest.mark.parametrize("kind", KINDS)
def test_crash_during_save_keeps_previous_generation(settings, kind, monkeypatch) -> None:
    s = cfg(settings, kind)
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1100, seed=3)
    ix.add(ids[:600], vecs[:600])
    ix.save()
    ix.add(ids[600:], vecs[600:])  # ivfpq: trains and rewrites its vector file
    ix.remove(ids[:5])
    real = vi.write_atomic

    def crash_on_manifest(path, write):
        if path.name == "manifest.json":
            raise OSError("disk died")
        real(path, write)

    monkeypatch.setattr(vi, "write_atomic", crash_on_manifest)
    with pytest.raises(OSError, match="disk died"):
        ix.save()
    monkeypatch.undo()
    back = VectorIndex.open(s.index_dir, s, FP)
    assert back.generation == 1
    assert len(back) == 600
    assert not back.trained
    assert np.array_equal(back.ids(), ids[:600])
    _, got = back.search(vecs[:3], 1)
    assert got[:, 0].tolist() == ids[:3].tolist()
    assert len(list(s.index_dir.iterdir())) == 1 + len(json.loads((s.index_dir / "manifest.json").read_text())["files"])
    back.add(ids[600:], vecs[600:])  # resumes cleanly
    back.save()
    assert len(VectorIndex.open(s.index_dir, s, FP)) == 1100


@pytest.mark.parametrize("kind", KINDS)
def test_compaction_drops_tombstones(settings, kind) -> None:
    s = cfg(settings, kind)
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1200, seed=4)
    ix.add(ids, vecs)
    ix.remove(ids[::3])  # 33% tombstones > COMPACT_FRACTION
    ix.save()
    assert ix.info()["slots"] == len(ix)
    assert len(ix) == 800
    assert ix.info()["tombstones"] == 0
    keep = np.setdiff1d(ids, ids[::3])
    assert np.array_equal(ix.ids(), keep)
    _, got = ix.search(vecs[1:2], 1)
    assert got[0, 0] == ids[1]
    np.testing.assert_allclose(ix.vectors(ids[1:2]), vecs[1:2], atol=1e-2)


def test_reader_reloads_new_generation(settings) -> None:
    s = cfg(settings, "hnsw")
    w = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(300, seed=6)
    w.add(ids[:100], vecs[:100])
    w.save()
    r = VectorIndex.open(s.index_dir, s, FP, readonly=True)
    assert len(r) == 100
    assert not r.reload()
    w.add(ids[100:], vecs[100:])
    w.remove(ids[:10])
    w.save()
    assert r.reload()
    assert len(r) == 290
    assert r.generation == 2
    with pytest.raises(AssertionError, match="read-only"):
        r.add(ids[:1], vecs[:1])


def test_empty_and_bad_input(settings) -> None:
    s = cfg(settings, "flat")
    ix = VectorIndex.open(s.index_dir, s, FP)
    sc, got = ix.search(np.zeros((2, DIM), np.float32), 3)
    assert (got == -1).all()
    assert np.isinf(sc).all()
    ids, vecs = data(4)
    ix.add(ids, vecs)
    _, got = ix.search(vecs[:1], 10)
    assert sorted(got[0, :4]) == sorted(ids)
    assert (got[0, 4:] == -1).all()
    with pytest.raises(Exception, match="query dimension 5"):
        ix.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(Exception, match="k must be"):
        ix.search(vecs[:1], 0)
    with pytest.raises(Exception, match="duplicates"):
        ix.add(np.array([1, 1]), vecs[:2])
    with pytest.raises(Exception, match="vecs shape"):
        ix.add(np.array([1]), vecs[:2])


def manifest(s) -> dict:
    return json.loads((s.index_dir / "manifest.json").read_text())


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_save_appends_a_segment_instead_of_rewriting_the_index(settings, kind) -> None:
    s = cfg(settings, kind)
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1500, seed=8)
    ix.add(ids[:1300], vecs[:1300])  # ivfpq: trained by now
    ix.save()
    first = manifest(s)["files"]["index.0"]
    first_stat = (s.index_dir / first).stat()
    ix.add(ids[1300:], vecs[1300:])
    ix.remove(ids[:3])  # a tombstone in the first segment
    ix.save()
    m = manifest(s)
    assert m["segments"] == [1300, 200]
    assert m["files"]["index.0"] == first
    assert (s.index_dir / first).stat().st_mtime_ns == first_stat.st_mtime_ns  # not rewritten
    assert faiss.read_index(str(s.index_dir / m["files"]["index.1"])).ntotal == 200  # only the new vectors
    again = VectorIndex.open(s.index_dir, s, FP, readonly=True)
    want, got = ix.search(vecs[:40], 5), again.search(vecs[:40], 5)
    assert np.array_equal(want[1], got[1])
    assert np.allclose(want[0], got[0])
    assert len(again) == 1497
    assert np.array_equal(again.ids(), np.sort(ids[3:]))


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_small_segments_are_merged_by_tiers(settings, monkeypatch, kind) -> None:
    """Once MERGE_RUN small segments would trail, a save writes them and its new vectors as one segment;
    segments of merge_below vectors or more are final (never read or rewritten again)."""
    monkeypatch.setattr(vi, "MERGE_RUN", 3)
    monkeypatch.setattr(vi, "MERGE_MIN", 250)
    monkeypatch.setattr(vi, "MERGE_PER_CELL", 1)
    s = cfg(settings, kind)
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(2000, seed=9)
    first = 1300 if kind == "ivfpq" else 100  # ivfpq: trained (one whole segment) by then
    ix.add(ids[:first], vecs[:first])
    ix.save()
    sizes = [manifest(s)["segments"]]
    for lo in range(first, first + 600, 100):
        ix.add(ids[lo : lo + 100], vecs[lo : lo + 100])
        ix.remove(ids[lo - 1 : lo])  # a tombstone in the segment before
        ix.save()
        sizes.append(manifest(s)["segments"])
        if len(sizes) == 4:
            final = s.index_dir / manifest(s)["files"]["index.0" if kind == "flat" else "index.1"]
            final_mtime = final.stat().st_mtime_ns
    if kind == "flat":
        assert sizes == [[100], [100, 100], [300], [300, 100], [300, 100, 100], [300, 300], [300, 300, 100]]
    else:
        assert sizes == [[1300], [1300, 100], [1300, 100, 100], [1300, 300], [1300, 300, 100],
                         [1300, 300, 100, 100], [1300, 300, 300]]
    assert final.stat().st_mtime_ns == final_mtime  # a final segment is not rewritten
    assert {p.name for p in s.index_dir.iterdir()} == {"manifest.json", *manifest(s)["files"].values()}
    n = first + 600
    reader = VectorIndex.open(s.index_dir, s, FP, readonly=True)
    live = np.setdiff1d(ids[:n], ids[first - 1 : n - 1 : 100])
    assert np.array_equal(reader.ids(), np.sort(live))
    if kind == "flat":  # exact: each live vector finds itself
        q = np.flatnonzero(np.isin(ids[:n], live))[::40]
        _, got = reader.search(vecs[q], 1)
        assert got[:, 0].tolist() == ids[q].tolist()
    want = ix.search(vecs[:60], 5)  # the writer loads its saved segments to search
    again = reader.search(vecs[:60], 5)
    assert np.array_equal(want[1], again[1])
    assert np.allclose(want[0], again[0])


def test_trained_ivfpq_writer_holds_only_its_unsaved_codes(settings) -> None:
    """After a save, and when it opens, a trained IVF-PQ writer holds the codes of its unsaved vectors only
    (plus 25 B of slot bookkeeping per vector); a search loads the saved ones, the next save drops them."""
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1500, seed=13)
    ix.add(ids[:1300], vecs[:1300])
    assert ix.trained
    code = s.index.pq_m + 8  # bytes per vector in FAISS: PQ code + label
    book = 8 + 1 + 16  # slot id, alive flag, id lookup (id + slot)
    resident = ix.ram_bytes()
    ix.save()
    assert ix.ram_bytes() <= resident - 1300 * code
    ix.add(ids[1300:], vecs[1300:])
    lean = ix.ram_bytes()
    assert lean <= 1300 * book + 200 * (code + book) + 1024 * 9  # capacity slack of the slot arrays
    ix.search(vecs[:50], 5)
    assert ix.ram_bytes() >= lean + 1500 * code - 200 * code  # the saved codes, loaded to search
    ix.add(*data(10, seed=14))
    ix.save()
    assert ix.ram_bytes() < lean + 10 * (code + book) + 1024 * 9
    writer = VectorIndex.open(s.index_dir, s, FP)
    assert writer.ram_bytes() <= 1510 * book
    reader = VectorIndex.open(s.index_dir, s, FP, readonly=True)
    assert reader.ram_bytes() >= 1510 * (code + book)
    got, want = reader.search(vecs[:50], 5), ix.search(vecs[:50], 5)  # the writer loads them again
    assert np.array_equal(got[1], want[1])
    assert np.allclose(got[0], want[0])


def test_hnsw_saves_one_segment(settings) -> None:
    s = cfg(settings, "hnsw")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(200, seed=10)
    ix.add(ids[:100], vecs[:100])
    ix.save()
    ix.add(ids[100:], vecs[100:])
    ix.save()
    assert manifest(s)["segments"] == [200]


def test_format_1_index_still_opens(settings) -> None:
    """An index saved before segments (one index/ids file, format 1) opens and keeps its vectors."""
    s = cfg(settings, "flat")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(300, seed=11)
    ix.add(ids, vecs)
    ix.save()
    m = manifest(s)
    files = m["files"]
    m["files"] = {"index": files["index.0"], "ids": files["ids.0"], "alive": files["alive"]}
    m["format"] = 1
    del m["segments"]
    (s.index_dir / "manifest.json").write_text(json.dumps(m))
    old = VectorIndex.open(s.index_dir, s, FP)
    _, got = old.search(vecs[:5], 1)
    assert got[:, 0].tolist() == ids[:5].tolist()
    old.add(*data(10, seed=12))
    old.save()
    assert manifest(s)["segments"] == [300, 10]


def test_ivfpq_add_encodes_once_like_faiss_add(settings) -> None:
    """Trained IVF-PQ: vectors are encoded once and the codes go to the index and the next segment; both
    hold exactly what faiss's own ``add`` would store."""
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1500, seed=10)
    ix.add(ids[:1300], vecs[:1300])
    assert ix.trained
    ref = faiss.clone_index(ix._index)
    ix.save()
    ix.add(ids[1300:], vecs[1300:])
    ref.add(vecs[1300:])
    tail = faiss.clone_index(ix._empty_tail())
    tail.add(vecs[1300:])
    for got, want in ((ix._resident(), ref), (ix._tail, tail)):
        faiss.extract_index_ivf(got).nprobe = faiss.extract_index_ivf(want).nprobe = ix.nlist
        d_got, i_got = got.search(vecs[1250:], 20)
        d_want, i_want = want.search(vecs[1250:], 20)
        assert np.array_equal(i_got, i_want)
        assert np.array_equal(d_got, d_want)


def test_faiss_threads_is_scoped() -> None:
    before = faiss.omp_get_max_threads()
    with vi.faiss_threads(0):
        assert faiss.omp_get_max_threads() == 1  # at least one
    assert faiss.omp_get_max_threads() == before


def test_ivfpq_training_is_logged(settings, caplog) -> None:
    """Training is the one long step of an IVF-PQ build without a progress bar: it is logged."""
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1300, seed=11)
    with caplog.at_level("INFO", logger="pubmind.ingest"):
        ix.add(ids, vecs)
    assert ix.trained
    assert any("training IVF-PQ" in r.getMessage() for r in caplog.records)
    assert any("IVF-PQ trained in" in r.getMessage() for r in caplog.records)



def _spy_train(monkeypatch, ix: VectorIndex) -> list[tuple[np.ndarray, bool]]:
    """Record what IVF-PQ training is given, and whether it is the untrained (flat) index's own memory."""
    seen: list[tuple[np.ndarray, bool]] = []
    real = faiss.IndexIVFPQ.train

    def spy(self, x):
        seen.append((np.array(x), np.shares_memory(x, vi._flat_view(ix._index, ix._n))))
        return real(self, x)

    monkeypatch.setattr(faiss.IndexIVFPQ, "train", spy)
    return seen


@pytest.mark.parametrize("tombstones", [0, 50])
def test_ivfpq_trains_on_the_flat_vectors_without_a_copy(settings, monkeypatch, tombstones) -> None:
    """Training on every slot reads the untrained index's own float32 array in place, a few tombstones
    included: no second copy of the training set (3.9 GB at expected_vectors 1e8)."""
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1300, seed=13)
    ix.add(ids[:900], vecs[:900])
    ix.remove(ids[:tombstones])
    seen = _spy_train(monkeypatch, ix)
    ix.add(ids[900:], vecs[900:])
    assert ix.trained
    assert len(seen) == 1
    assert seen[0][1]
    np.testing.assert_array_equal(seen[0][0], vecs)


def test_ivfpq_trains_on_a_sample_of_live_exact_vectors(settings, monkeypatch) -> None:
    """More live vectors than the sample: training gets a copy of sampled live slots' exact float32
    vectors (not their float16 copies, no tombstone)."""
    monkeypatch.setattr(vi, "TRAIN_MIN_SAMPLE", 400)
    monkeypatch.setattr(vi, "TRAIN_PER_CELL", 1)
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1300, seed=17)
    ix.add(ids[:900], vecs[:900])
    ix.remove(ids[:50])
    seen = _spy_train(monkeypatch, ix)
    ix.add(ids[900:], vecs[900:])
    assert ix.trained
    assert len(seen) == 1
    x, in_place = seen[0]
    assert not in_place
    assert x.shape == (400, DIM)
    rows = {v.tobytes(): k for k, v in enumerate(vecs)}
    picked = np.array([rows[v.tobytes()] for v in x])  # every row is one of the exact vectors ...
    assert (picked >= 50).all()  # ... of a live slot
    assert len(np.unique(picked)) == 400


def test_ivfpq_rebuild_reads_the_vector_file_in_windows_not_mapped(settings, monkeypatch) -> None:
    """A rebuild (training, compaction) reads the float16 file in bounded windows: a memory map of it
    would put the whole file (768 B per vector) into the writer's RSS. Rows read across window gaps
    are the stored rows."""
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1300, seed=15)
    monkeypatch.setattr(vi, "READ_WINDOW", 7)
    monkeypatch.setattr(vi, "REBUILD_BLOCK", 100)
    ix.add(ids[:900], vecs[:900])
    ix.remove(ids[100:400])  # gaps longer than the window
    mapped = []
    real_memmap = np.memmap
    monkeypatch.setattr(vi.np, "memmap", lambda *a, **k: mapped.append(a) or real_memmap(*a, **k))
    ix.add(ids[900:], vecs[900:])  # trains, then rebuilds into IVF-PQ
    assert ix.trained
    assert mapped == []
    monkeypatch.undo()
    keep = np.concatenate([ids[:100], ids[400:]])
    np.testing.assert_array_equal(ix.ids(), keep)
    want = np.concatenate([vecs[:100], vecs[400:]]).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ix.vectors(keep), want)  # through the map: the same rows were moved


def test_save_trims_the_heap(settings, monkeypatch) -> None:
    """Each save hands the heap's free pages back (glibc), so the writer's RSS follows what it holds."""
    assert vi._trim_heap is not None  # glibc (Linux): the call exists
    calls: list[int] = []
    monkeypatch.setattr(vi, "_trim_heap", lambda: calls.append(1))
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ix.add(*data(100, seed=16))
    ix.save()
    assert calls == [1]


def test_ivfpq_training_shows_kmeans_progress_and_equals_faiss(settings, caplog) -> None:
    """k-means runs one iteration at a time, each logged, and trains the same index as FAISS's own
    ``train`` (the same centroids, the same PQ)."""
    s = cfg(settings, "ivfpq")
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1300, seed=18)
    with caplog.at_level("INFO", logger="pubmind.ingest"):
        ix.add(ids, vecs)
    assert ix.trained
    steps = [r.getMessage() for r in caplog.records if "k-means iteration" in r.getMessage()]
    ivf = faiss.downcast_index(faiss.extract_index_ivf(ix._index))
    assert len(steps) == ivf.cp.niter
    assert steps[-1].startswith(f"index: k-means iteration {ivf.cp.niter}/{ivf.cp.niter}")
    ref = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, ivf.nlist, ivf.pq.M, 8, faiss.METRIC_INNER_PRODUCT)
    ref.train(vecs)
    np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, ivf.nlist), ref.quantizer.reconstruct_n(0, ref.nlist))
    np.testing.assert_array_equal(faiss.vector_to_array(ivf.pq.centroids), faiss.vector_to_array(ref.pq.centroids))


def test_multi_segment_ivfpq_load_reserves_each_list_once(settings) -> None:
    """Loading IVF-PQ segments sizes each inverted list for all of them first (the merges then append in
    place, without regrowing), and holds exactly the entries a plain merge of the segments gives."""
    s = cfg(settings, "ivfpq")
    w = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1500, seed=19)
    for i in range(0, 1500, 300):
        w.add(ids[i : i + 300], vecs[i : i + 300])
        w.save()
    assert len(manifest(s)["segments"]) > 1
    r = VectorIndex.open(s.index_dir, s, FP, readonly=True)
    got = faiss.extract_index_ivf(r._index).invlists
    segs = manifest(s)
    plain = faiss.read_index(str(s.index_dir / segs["files"]["index.0"]))
    start = plain.ntotal
    for i in range(1, len(segs["segments"])):
        seg = faiss.read_index(str(s.index_dir / segs["files"][f"index.{i}"]))
        plain.merge_from(seg, start)
        start += seg.ntotal
    want = faiss.extract_index_ivf(plain).invlists
    for lst in range(want.nlist):
        n = want.list_size(lst)
        assert got.list_size(lst) == n
        if n:
            np.testing.assert_array_equal(faiss.rev_swig_ptr(got.get_ids(lst), n), faiss.rev_swig_ptr(want.get_ids(lst), n))
            np.testing.assert_array_equal(faiss.rev_swig_ptr(got.get_codes(lst), n * got.code_size),
                                          faiss.rev_swig_ptr(want.get_codes(lst), n * want.code_size))


def test_reserved_lists_append_in_place() -> None:
    """After ``_reserve_lists``, appending up to the reserved size does not move a list's data."""
    il = faiss.ArrayInvertedLists(2, 4)
    il.add_entries(0, 3, faiss.swig_ptr(np.arange(3, dtype=np.int64)), faiss.swig_ptr(np.ones(12, np.uint8)))
    vi._reserve_lists(il, np.array([1000, 0]))
    assert il.list_size(0) == 3
    np.testing.assert_array_equal(faiss.rev_swig_ptr(il.get_ids(0), 3), [0, 1, 2])
    before = faiss.rev_swig_ptr(il.get_codes(0), 1).ctypes.data
    il.add_entries(0, 997, faiss.swig_ptr(np.arange(3, 1000, dtype=np.int64)), faiss.swig_ptr(np.zeros(997 * 4, np.uint8)))
    assert faiss.rev_swig_ptr(il.get_codes(0), 1).ctypes.data == before


def test_reader_retries_when_a_segment_is_gone(settings, monkeypatch) -> None:
    """A segment deleted under a reader (the writer's cleanup after a newer save) is a FileNotFoundError,
    which the reader retries on; FAISS itself raises a RuntimeError for it."""
    s = cfg(settings, "ivfpq")
    w = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(1500, seed=20)
    w.add(ids[:1200], vecs[:1200])
    w.save()
    w.add(ids[1200:], vecs[1200:])
    w.save()
    gone = s.index_dir / manifest(s)["files"]["index.1"]
    data_ = gone.read_bytes()
    gone.unlink()
    naps: list[float] = []

    def nap(seconds: float) -> None:  # the writer's newer generation "arrives" during the reader's wait
        naps.append(seconds)
        gone.write_bytes(data_)

    monkeypatch.setattr(vi.time, "sleep", nap)
    r = VectorIndex.open(s.index_dir, s, FP, readonly=True)
    assert len(naps) == 1
    assert len(r) == 1500


@pytest.mark.parametrize("nlist", [64, 512])  # list numbers of 1 and 2 bytes
def test_ivfpq_encoding_matches_faiss(nlist: int) -> None:
    """``_sa_encode`` (the PQ step through FAISS's assign-index path) gives FAISS's own ``sa_encode`` codes:
    the same IVF cell for every vector, the same PQ code for all but near-ties, which decode equally near."""
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((300, 384)).astype(np.float32)
    x = centers[rng.integers(0, 300, 24_000)] + 0.6 * rng.standard_normal((24_000, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(384), 384, nlist, 48, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = ivf.pq.cp.niter = 4
    ivf.train(x[:20_000])
    new = x[20_000:]
    want, got = ivf.sa_encode(new), vi._sa_encode(ivf, new)
    assert got.shape == want.shape == (4_000, ivf.coarse_code_size() + 48)
    nb = ivf.coarse_code_size()
    assert np.array_equal(got[:, :nb], want[:, :nb])
    same = (got == want).all(axis=1)
    assert same.mean() >= 0.999
    differ = ~same
    if differ.any():  # near-ties: the reconstructions are as near to the vector either way
        err_got = np.linalg.norm(ivf.sa_decode(got[differ]) - new[differ], axis=1)
        err_want = np.linalg.norm(ivf.sa_decode(want[differ]) - new[differ], axis=1)
        assert np.allclose(err_got, err_want, atol=1e-4)
    assert ivf.pq.assign_index is None
    flat = faiss.IndexFlatIP(384)
    assert np.array_equal(vi._sa_encode(flat, new), flat.sa_encode(new))  # other kinds: FAISS's own
