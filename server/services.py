"""The composition root: every service the API uses, built once in the Litestar lifespan with explicit
constructor dependencies, and injected into handlers under the name it has here (``Services`` field name ==
dependency name == ``app.state`` attribute)::

    settings -> stores (corpus, answers, corrections, jobs, key_store), registry, vLLM client -> deployer
    corpus -> index (IndexHolder) -> rag (RagService) -> query_service, chat_service -> responses_service
    system_service, feedback_service, retune_service (JobRunner), adapter_service
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any

import anyio
from litestar import Litestar

from finetune.jobs import JobRunner
from finetune.registry import AdapterRegistry
from finetune.store import AnswerStore, CorrectionStore, JobStore
from generation.deploy import AdapterDeployer
from generation.supervisor import VllmSupervisor
from generation.vllm_client import VllmClient, make_client
from pubmind.audit import AuditLog
from pubmind.errors import ConfigError
from pubmind.settings import Settings
from retrieval.store import CorpusStore
from server import scheduler
from server.adapters.service import AdapterService
from server.audit.service import AuditService
from server.auth import KeyStore
from server.chat.service import ChatService
from server.feedback.service import FeedbackService
from server.index_holder import IndexHolder
from server.keys.service import KeyService
from server.metrics import Metrics
from server.query.service import QueryService
from server.rag import RagService
from server.ratelimit import RateLimiter
from server.responses.service import ResponsesService
from server.retune.policy import PolicyService, PolicyStore
from server.retune.service import RetuneService
from server.system.service import SystemService

log = logging.getLogger("pubmind.server")


def load_llm_tokenizer(model: str) -> Any:
    """The base model's tokenizer (prompt token budgets are counted in the tokens vLLM sees)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"llm.model={model!r}: cannot load its tokenizer (needed to fit evidence into the "
                          f"context): {e}", param="llm.model") from e


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    limiter: RateLimiter
    key_store: KeyStore | None  # None when settings.server.auth is off
    supervisor: VllmSupervisor | None  # None when vLLM runs elsewhere (llm.vllm_url)
    vllm: VllmClient
    corpus: CorpusStore
    answers: AnswerStore
    corrections: CorrectionStore
    jobs: JobStore
    audit: AuditLog
    registry: AdapterRegistry
    deployer: AdapterDeployer
    index: IndexHolder
    rag: RagService
    query_service: QueryService
    chat_service: ChatService
    responses_service: ResponsesService
    system_service: SystemService
    feedback_service: FeedbackService
    retune_service: RetuneService
    adapter_service: AdapterService
    audit_service: AuditService
    key_service: KeyService
    policy_service: PolicyService  # re-tune policies (its loop runs in the lifespan)

    async def aclose(self) -> None:
        await asyncio.shield(self.vllm.aclose())
        closers: list[Callable[[], None]] = [self.corpus.close, self.answers.close, self.corrections.close,
                                             self.jobs.close, self.audit.close, self.policy_service.store.close]
        if self.key_store is not None:
            closers.append(self.key_store.close)
        for close in closers:
            try:
                close()
            except Exception as e:  # closing must not mask the shutdown
                log.warning("closing failed: %s", e)


SERVICE_NAMES = tuple(f.name for f in fields(Services))


def build_services(settings: Settings, supervisor: VllmSupervisor | None = None,
                   metrics: Metrics | None = None) -> Services:
    """Everything, wired; blocking (loads the tokenizer and opens the index: run it in a thread)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    url = supervisor.url if supervisor is not None else settings.llm.vllm_url
    if not url:
        raise ConfigError("llm.vllm_url is empty and no vLLM is supervised: start the API with 'pubmind serve' "
                          "(which launches vLLM) or set llm.vllm_url / --vllm-url", param="llm.vllm_url")
    metrics = metrics or Metrics()
    vllm = make_client(settings, url)
    corpus, registry = CorpusStore(settings.corpus_db), AdapterRegistry(settings.adapters_dir)
    answers, corrections, jobs = AnswerStore(settings.app_db), CorrectionStore(settings.app_db), JobStore(settings.app_db)
    audit = AuditLog(settings.app_db)
    deployer = AdapterDeployer.from_settings(vllm, registry, settings)
    index = IndexHolder(settings, corpus)
    index.refresh()
    rag = RagService(settings=settings, index=index, registry=registry, deployer=deployer, vllm=vllm,
                     answers=answers, metrics=metrics, tokenizer=load_llm_tokenizer(settings.llm.model))
    chat_service = ChatService(settings=settings, rag=rag, registry=registry)
    runner = JobRunner(settings, jobs, corrections)
    runner.recover()  # re-tune jobs cut off by a restart are marked failed now
    if supervisor is not None:
        supervisor.on_restart = metrics.vllm_restarts.inc
    key_store = KeyStore(settings.app_db) if settings.server.auth else None
    retune_service = RetuneService(runner, jobs, audit)
    return Services(
        settings=settings, metrics=metrics, limiter=RateLimiter(settings.server.rate_limit_per_minute),
        key_store=key_store, supervisor=supervisor, vllm=vllm,
        corpus=corpus, answers=answers, corrections=corrections, jobs=jobs, audit=audit, registry=registry,
        deployer=deployer,
        index=index, rag=rag, query_service=QueryService(rag),
        chat_service=chat_service, responses_service=ResponsesService(chat_service),
        system_service=SystemService(vllm=vllm, supervisor=supervisor, index=index, corpus=corpus, metrics=metrics),
        feedback_service=FeedbackService(settings=settings, corrections=corrections, answers=answers, corpus=corpus,
                                         audit=audit),
        retune_service=retune_service,
        adapter_service=AdapterService(registry, deployer, audit),
        audit_service=AuditService(audit), key_service=KeyService(key_store, audit),
        policy_service=PolicyService(settings, PolicyStore(settings.app_db), retune_service, jobs, corrections),
    )


def make_lifespan(settings: Settings, supervisor: VllmSupervisor | None, metrics: Metrics, *,
                  scheduled: bool = False) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Build the services on startup (in a thread: models load), put each on ``app.state`` under its name,
    close them on exit. ``scheduled``: also run the periodic tasks (``server.scheduler``: sync, retention)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await anyio.to_thread.run_sync(build_services, settings, supervisor, metrics)
        for name in SERVICE_NAMES:
            app.state[name] = getattr(services, name)
        running = scheduler.start(scheduler.scheduled_tasks(settings), metrics) if scheduled else []
        running.append(asyncio.create_task(services.policy_service.run(), name="retune-policies"))
        try:
            yield
        finally:
            await scheduler.stop(running)
            await services.aclose()

    return lifespan
