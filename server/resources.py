"""Heavy resources, created once per app in its lifespan and injected into handlers.

Dependencies available to every handler (and to routers mounted from ``server/routes``) by parameter name:
``resources`` (this ``Resources``), ``settings``, ``answer_store`` (AnswerStore), ``correction_store``
(CorrectionStore), ``job_store`` (JobStore), ``registry``
(AdapterRegistry), ``vllm`` (generation.vllm_client.VllmClient), ``rag`` (server.rag.RagService) and
``key_store`` (KeyStore, None when auth is off). The caller is ``request.user`` (a ``server.auth.Principal``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Litestar

from finetune.registry import AdapterRegistry
from finetune.store import AnswerStore, CorrectionStore, JobStore
from generation.deploy import AdapterDeployer
from generation.vllm_client import VllmClient
from pubmind.errors import ConfigError, PubmindError, ServiceUnavailable
from pubmind.settings import Settings
from retrieval.store import CorpusStore
from server.auth import KeyStore
from server.batching import QueryBatcher
from server.metrics import Metrics
from server.ratelimit import RateLimiter

if TYPE_CHECKING:
    from generation.supervisor import VllmSupervisor
    from server.rag import RagService

log = logging.getLogger("pubmind.server")

INDEX_RELOAD_SECONDS = 5.0  # how often a newer index generation written by an ingest process is picked up


def load_llm_tokenizer(model: str) -> Any:
    """The base model's tokenizer (prompt token budgets are counted in the tokens vLLM sees)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"llm.model={model!r}: cannot load its tokenizer (needed to fit evidence into the "
                          f"context): {e}", param="llm.model") from e


class Resources:
    """Everything handlers share; one per app (a plain class: Litestar injects it as is)."""

    def __init__(self, *, settings: Settings, metrics: Metrics, limiter: RateLimiter, keys: KeyStore | None,
                 vllm: VllmClient, store: CorpusStore, answers: AnswerStore, corrections: CorrectionStore,
                 jobs: JobStore, registry: AdapterRegistry,
                 tokenizer: Any, supervisor: VllmSupervisor | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limiter = limiter
        self.keys = keys
        self.vllm = vllm
        self.store = store
        self.answers, self.corrections, self.jobs = answers, corrections, jobs
        self.registry = registry
        self.tokenizer = tokenizer
        self.supervisor = supervisor
        self.deployer = AdapterDeployer(vllm, registry, keep_loaded=settings.finetune.keep_loaded)
        self.searcher: Any = None  # retrieval.search.Searcher once an index exists
        self.index: Any = None  # retrieval.index.VectorIndex
        self.index_error: str | None = "index not loaded"
        self.rag: RagService | None = None
        self._index_lock = threading.Lock()
        self._index_checked = 0.0
        self._embedder: Any = None
        self._batcher: QueryBatcher | None = None
        self._reranker: Any = None

    # ---- index ----------------------------------------------------------------------------------
    def _open_index(self) -> None:
        """Open the index and searcher if there are none yet, or swap in a newer generation an ingest process
        saved (a new VectorIndex + Searcher; searches in flight keep using the old ones)."""
        from retrieval.index import VectorIndex, disk_generation

        with self._index_lock:
            now = time.monotonic()
            if self.searcher is None and self.index_error and now - self._index_checked < 1.0:
                return
            self._index_checked = now
            generation = disk_generation(self.settings.index_dir)
            if generation is None:
                if self.searcher is None:
                    self.index_error = (f"no vector index at {self.settings.index_dir}; ingest articles first "
                                        f"('pubmind ingest ...')")
                return
            if self.index is not None and generation == self.index.generation:
                return
            try:
                from retrieval.embed import Embedder
                from retrieval.search import Searcher, load_reranker

                if self._embedder is None:
                    self._embedder = Embedder(self.settings.embedding)
                    self._batcher = QueryBatcher(self._embedder)
                    self._reranker = load_reranker(self.settings)
                index = VectorIndex.open(self.settings.index_dir, self.settings, self._embedder.fingerprint,
                                         readonly=True)
                searcher = Searcher(self.settings, self.store, index, self._batcher, self._reranker)
                self.index, self.searcher = index, searcher
                self.index_error = None
                log.info("index open: %s", index.info())
            except PubmindError as e:
                if self.searcher is None:
                    self.index_error = e.message
                log.error("cannot open the index: %s", e.message)

    async def ensure_index(self) -> Any:
        """The Searcher, opening/reloading the index when due; ServiceUnavailable while there is none."""
        if self.searcher is None or time.monotonic() - self._index_checked >= INDEX_RELOAD_SECONDS:
            await anyio.to_thread.run_sync(self._open_index)
        if self.searcher is None:
            raise ServiceUnavailable(f"search index unavailable: {self.index_error}")
        return self.searcher

    @property
    def index_version(self) -> str | None:
        if self.index is None:
            return None
        return f"{self.index.created_at}#g{self.index.generation}"

    def close(self) -> None:
        closers = [self.store.close, self.answers.close, self.corrections.close, self.jobs.close] + ([self.keys.close] if self.keys else [])
        for closer in closers:
            try:
                closer()
            except Exception as e:  # closing must not mask the shutdown
                log.warning("close failed: %s", e)


def build_resources(settings: Settings, supervisor: VllmSupervisor | None = None,
                    metrics: Metrics | None = None) -> Resources:
    from server.rag import RagService

    settings.home.mkdir(parents=True, exist_ok=True)
    url = supervisor.url if supervisor is not None else settings.llm.vllm_url
    if not url:
        raise ConfigError("llm.vllm_url is empty and no vLLM is supervised: start the API with 'pubmind serve' "
                          "(which launches vLLM) or set llm.vllm_url / --vllm-url", param="llm.vllm_url")
    res = Resources(
        settings=settings,
        metrics=metrics or Metrics(),
        limiter=RateLimiter(settings.server.rate_limit_per_minute),
        keys=KeyStore(settings.app_db) if settings.server.auth else None,
        vllm=VllmClient(url, timeout_seconds=settings.llm.request_timeout_seconds),
        store=CorpusStore(settings.corpus_db),
        answers=AnswerStore(settings.app_db),
        corrections=CorrectionStore(settings.app_db),
        jobs=JobStore(settings.app_db),
        registry=AdapterRegistry(settings.adapters_dir),
        tokenizer=load_llm_tokenizer(settings.llm.model),
        supervisor=supervisor,
    )
    res._open_index()
    res.rag = RagService(res)
    return res


def make_lifespan(settings: Settings, supervisor: VllmSupervisor | None,
                  metrics: Metrics) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Litestar lifespan: build the resources on startup (in a thread: models load), close them on exit."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        res = await anyio.to_thread.run_sync(build_resources, settings, supervisor, metrics)
        app.state.resources = res
        app.state.auth_keys = res.keys
        app.state.limiter = res.limiter
        if supervisor is not None:
            supervisor.on_restart = res.metrics.vllm_restarts.inc
        from server.routes.retune import job_runner

        job_runner(app.state, settings, res.jobs, res.corrections)  # re-tune jobs cut off by a restart are marked failed now
        try:
            yield
        finally:
            await asyncio.shield(res.vllm.aclose())
            res.close()

    return lifespan
