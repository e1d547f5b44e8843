"""IVF-PQ nlist from the expected corpus size (index.expected_vectors), FAISS's 4-16*sqrt(N) guideline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pubmind.settings import IndexSettings
from retrieval.index import MIN_PER_CELL, VectorIndex, choose_nlist, target_nlist, train_at
from tests.conftest import settings_at
from tests.test_retrieval_index import FP, data


@pytest.mark.parametrize("n", [300_000, 1_000_000, 38_000_000, 100_000_000])
def test_nlist_within_faiss_guideline(n):
    nlist = target_nlist(n)
    assert choose_nlist(n, n) == nlist  # enough vectors to train it
    assert 4 * math.sqrt(n) <= nlist <= 16 * math.sqrt(n), nlist
    assert nlist & (nlist - 1) == 0, nlist  # a power of two


def test_nlist_examples():
    assert choose_nlist(1_000_000, 1_000_000) == 8192
    assert choose_nlist(100_000_000, 100_000_000) == 65536
    assert choose_nlist(0, 0) == 1


def test_nlist_follows_expected_size_not_training_set():
    assert choose_nlist(100_000_000, 5_000_000) == 65536  # 76 vectors per cell available
    assert choose_nlist(0, 5_000_000) == 16384  # unknown size: from the vectors present


def test_nlist_capped_by_training_vectors():
    assert choose_nlist(100_000_000, 100_000) == 100_000 // MIN_PER_CELL


def test_train_at_waits_for_enough_vectors():
    assert train_at(IndexSettings(train_min=100_000)) == 100_000
    assert train_at(IndexSettings(train_min=100_000, expected_vectors=100_000_000)) == 39 * 65536
    assert train_at(IndexSettings(train_min=100_000, expected_vectors=100_000_000, ivf_nlist=1024)) == 100_000


def test_ivfpq_trains_with_nlist_from_expected_vectors(settings):
    # expected 2,500 vectors -> 8*sqrt(2500)=400 -> nlist 512, so it waits for 39*512 = 19,968 vectors (not
    # train_min=1000); at 20,000 present: 8*sqrt(20000) -> 1024, capped to 20000 // 39 = 512 cells
    s = settings_at(settings.home, index={"kind": "ivfpq", "pq_m": 8, "train_min": 1000, "expected_vectors": 2500})
    ix = VectorIndex.open(s.index_dir, s, FP)
    ids, vecs = data(20_000)
    ix.add(ids[:19_000], vecs[:19_000])
    assert not ix.trained
    ix.add(ids[19_000:], vecs[19_000:])
    assert ix.trained
    assert ix.nlist == 512
    _, got = ix.search(vecs[:20], 1)
    assert np.mean(got[:, 0] == ids[:20]) >= 0.9
