"""Prometheus metrics (one registry per app so several apps can live in one test process)."""

from __future__ import annotations

import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("pubmind_requests_total", "HTTP requests by route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("pubmind_request_seconds", "HTTP request latency (until the last byte).",
                                 ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.retrieval = Histogram("pubmind_retrieval_seconds", "Retrieval time per query.",
                                   buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.generation = Histogram("pubmind_generation_seconds", "Generation time per answer (vLLM).",
                                    ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("pubmind_tokens_total", "Tokens processed by vLLM.", ["kind", "model"],
                              registry=self.registry)
        self.unsupported = Counter("pubmind_unsupported_citations_total",
                                   "Citations of PMIDs that were not in the evidence.", registry=self.registry)
        self.scheduled = Counter("pubmind_scheduled_runs_total", "Runs of scheduled tasks (sync, retention).",
                                 ["task", "result"], registry=self.registry)
        self.vllm_restarts = Counter("pubmind_vllm_restarts_total", "Restarts of the supervised vLLM.",
                                     registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and their latency by route template (not raw path: no label explosion)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as e:  # answered by the app's exception handlers further out
            status["code"] = getattr(e, "status", None) or getattr(e, "status_code", None) or 500
            raise
        finally:
            route = scope.get("path_template") or ("unmatched" if status["code"] == 404 else scope["path"])
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
