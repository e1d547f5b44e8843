"""``SystemService``: readiness (vLLM and the index), Prometheus metrics, stored articles."""

from __future__ import annotations

from typing import Any, Literal

import anyio
import msgspec

from generation.supervisor import VllmSupervisor
from generation.vllm_client import VllmClient
from pubmind.errors import NotFound, PubmindError
from pubmind.versions import stack_versions
from retrieval.store import CorpusStore
from server.index_holder import IndexHolder
from server.metrics import Metrics
from server.system.protocol import ArticleResponse, HealthResponse


class SystemService:
    def __init__(self, *, vllm: VllmClient, supervisor: VllmSupervisor | None, index: IndexHolder,
                 corpus: CorpusStore, metrics: Metrics) -> None:
        self.vllm, self.supervisor, self.index, self.corpus, self.metrics = vllm, supervisor, index, corpus, metrics
        self._stack: dict[str, str | None] | None = None  # library versions, read at the first admin health check

    async def health(self, *, detail: bool) -> HealthResponse:
        """Ready when vLLM answers and an index generation is served. Reads the index holder's state only (a
        health probe never opens or reloads the index). ``detail``: internals for admins."""
        public: list[str] = []  # reasons anyone may read
        private: list[str] = []  # the same with URLs, paths and pids
        vllm: dict[str, Any] = {"url": self.vllm.base_url}
        if self.supervisor is not None:
            sup = self.supervisor.state()
            vllm.update(msgspec.structs.asdict(sup))
            if sup.state != "ready":
                public.append(f"vLLM is {sup.state}")
                private.append(sup.reason)
        if not public:
            try:
                await self.vllm.health()
            except PubmindError as e:
                public.append("vLLM is not reachable")
                private.append(e.message)
        idx = self.index.status()
        if not idx.ready:
            public.append("the search index is not available")
            private.append(f"search index unavailable: {idx.error}")
        status: Literal["ready", "unavailable"] = "unavailable" if public else "ready"
        if not detail:
            return HealthResponse(status=status, reason="; ".join(public) or None)
        if self._stack is None:
            self._stack = await anyio.to_thread.run_sync(lambda: stack_versions(vllm_url=self.vllm.base_url))
        return HealthResponse(status=status, reason="; ".join(private) or None, vllm=vllm,
                              index={"version": idx.version, **idx.info} if idx.ready else {}, versions=self._stack)

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    async def article(self, pmid: int) -> ArticleResponse:
        found = await anyio.to_thread.run_sync(self.corpus.get, pmid)
        if found is None:
            raise NotFound(f"PMID {pmid} is not in the corpus", param="pmid")
        return ArticleResponse(url=found.url, article=found, retracted=found.retracted)
