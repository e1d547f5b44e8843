"""Embedding on Ray (``ingest.executor = "ray"``): an actor pool, one actor per GPU (CPU actors where
there is none), each holding its own ``Embedder``. The Indexer stays the single writer: ``RayEmbedder``
is an ``EmbedderLike`` whose ``encode_passages`` sorts a page of texts by length, cuts it into batches,
spreads them over the actors and returns the vectors in the page's order, so the store, the index and the
crash-safety guarantees are those of the local path. Join a cluster started with ``ray start --head`` (or
KubeRay) through ``ingest.ray_address``. Parsing and chunking run as Ray tasks too (``ingest.pipeline``):
CPU actors leave ``parse_cpus`` of the cluster's CPUs free for them."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pubmind.errors import ConfigError
from pubmind.settings import EmbeddingSettings, Settings

log = logging.getLogger("pubmind.ingest")
BATCHES_PER_ACTOR = 4  # per page: keeps every actor busy while the slowest batch finishes


class _EmbedActor:
    """Runs inside a Ray worker: one Embedder (or a test stand-in from ``factory``)."""

    def __init__(self, settings: EmbeddingSettings, factory: Callable[[], Any] | None) -> None:
        if factory is not None:
            self.embedder = factory()
        else:
            from retrieval.embed import Embedder

            self.embedder = Embedder(settings)

    def fingerprint(self) -> dict[str, Any]:
        return dict(self.embedder.fingerprint)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode_passages(texts)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("ingest.executor='ray' needs Ray (pip install 'pubmind[ray]')", param="ingest.executor") from None
    return ray


def ray_init(settings: Settings) -> Any:
    """The ``ray`` module, connected: ``ingest.ray_address`` 'local' starts a local Ray, anything else joins
    that cluster; a process where Ray is already up (an earlier call, a test's fixture) keeps it."""
    ray = _ray()
    if not ray.is_initialized():
        addr = settings.ingest.ray_address
        ray.init(address=None if addr == "local" else addr, include_dashboard=False, log_to_driver=False)
    return ray


def parse_cpus(cpus: int) -> int:
    """CPUs of a cluster without GPUs that the embedding actors leave to the parse tasks (one CPU each)."""
    return max(1, cpus // 8)


class RayEmbedder:
    """``EmbedderLike`` over Ray actors. ``factory`` (tests): builds each actor's embedder instead of
    ``Embedder(settings.embedding)``; the writer's tokenizer (for chunking) is loaded locally."""

    def __init__(self, settings: Settings, factory: Callable[[], Any] | None = None) -> None:
        ray = ray_init(settings)
        s = settings.ingest
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        budget = cpus - parse_cpus(cpus)  # CPU actors: the rest is left free for the parse tasks
        n = s.ray_actors or (gpus if gpus else max(1, budget // 2))
        emb = settings.embedding
        if gpus:
            opts: dict[str, Any] = {"num_gpus": 1 if n <= gpus else gpus / n}
            emb = emb.model_copy(update={"device": "cuda"})  # Ray sets CUDA_VISIBLE_DEVICES per actor
        else:  # a fraction (even 0 on a 1-CPU Ray) runs the actor on one thread
            opts = {"num_cpus": budget // n if budget >= n else budget / n}
            emb = emb.model_copy(update={"device": "cpu"})
        actor = ray.remote(**opts)(_EmbedActor)
        self.actors = [actor.remote(emb, factory) for _ in range(n)]
        self.batch_size = emb.batch_size
        fps = ray.get([a.fingerprint.remote() for a in self.actors])  # every actor placed and loaded
        if any(fp != fps[0] for fp in fps):
            self.close()
            raise ConfigError(f"Ray embedding actors load different models (check embedding.model on every "
                              f"node): {fps}", param="embedding.model")
        self._fp: dict[str, Any] = fps[0]
        self.dim = int(self._fp["dim"])
        if factory is not None:
            self.tokenizer = factory().tokenizer
        else:
            from transformers import AutoTokenizer

            from retrieval.embed import resolve_model

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(emb.model))
        kind = f"{n} GPU actor(s)" if gpus else f"{n} CPU actor(s), {opts['num_cpus']} CPU each"
        log.info("ingest: embedding on Ray (%s): %s", s.ray_address, kind)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._fp

    def encode_passages(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(n, dim) float32, in the order of ``texts``."""
        ray = _ray()
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
        per = max(batch_size or self.batch_size, math.ceil(len(texts) / (len(self.actors) * BATCHES_PER_ACTOR)))
        pieces = [order[i : i + per] for i in range(0, len(order), per)]
        refs = [self.actors[j % len(self.actors)].encode.remote([texts[i] for i in p]) for j, p in enumerate(pieces)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for p, vecs in zip(pieces, ray.get(refs), strict=True):
            out[p] = vecs
        return out

    def close(self) -> None:
        ray = _ray()
        for a in self.actors:
            ray.kill(a)
        self.actors = []
