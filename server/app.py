"""``create_app(settings)``: the Litestar application.

Routers: ``/v1/query`` (server.query), ``/v1/chat/completions`` + ``/v1/models`` (server.chat),
``/health``, ``/metrics``, ``/v1/articles/{pmid}`` (server.system), and the fine-tuning routers
``server/routes/{feedback,retune,adapters}.py`` (each exports ``router``; mounted as they are).
OpenAPI docs at ``/schema`` (``/schema/swagger``, ``/schema/redoc``, ``/schema/openapi.json``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from pubmind.settings import Settings
from server.auth import OPEN_PATHS, AuthMiddleware
from server.errors import EXCEPTION_HANDLERS
from server.metrics import Metrics, MetricsMiddleware
from server.resources import Resources, make_lifespan

if TYPE_CHECKING:
    from generation.supervisor import VllmSupervisor

FINETUNE_ROUTERS = ("server.routes.feedback", "server.routes.retune", "server.routes.adapters")


def _dep(attr: str) -> Provide:
    def provide(state: State) -> Any:
        return getattr(state.resources, attr)

    provide.__name__ = f"provide_{attr}"
    return Provide(provide, sync_to_thread=False)


def _resources(state: State) -> Resources:
    return state.resources


DEPENDENCIES = {
    "resources": Provide(_resources, sync_to_thread=False),
    "settings": _dep("settings"),
    "rag": _dep("rag"),
    "answer_store": _dep("answers"),
    "correction_store": _dep("corrections"),
    "job_store": _dep("jobs"),
    "registry": _dep("registry"),
    "vllm": _dep("vllm"),
    "deployer": _dep("deployer"),
    "key_store": _dep("keys"),
}


def extra_routers() -> list[Router]:
    """The fine-tuning engineer's routers that exist (a missing module is skipped; a broken one raises)."""
    out = []
    for mod in FINETUNE_ROUTERS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        out.append(m.router)
    return out


def create_app(settings: Settings, *, supervisor: VllmSupervisor | None = None) -> Litestar:
    """The API for ``settings``. vLLM is reached at ``supervisor.url`` when a supervisor is given, else at
    ``settings.llm.vllm_url``. Resources (stores, index, embedder, tokenizer, vLLM client) are built in the
    lifespan, so creating the app is cheap and tests pass their own settings."""
    from server.chat.routes import router as chat_router
    from server.query.routes import router as query_router
    from server.system.routes import router as system_router

    metrics = Metrics()
    return Litestar(
        route_handlers=[system_router, query_router, chat_router, *extra_routers()],
        lifespan=[make_lifespan(settings, supervisor, metrics)],
        dependencies=DEPENDENCIES,
        middleware=[
            DefineMiddleware(MetricsMiddleware, metrics=metrics),
            DefineMiddleware(AuthMiddleware, exclude=[f"^{p}" for p in OPEN_PATHS]),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="pubmind", version="0.1.0", path="/schema",
            description="PubMed literature assistant: cited answers (OpenAI-compatible), search, feedback, "
            "adapters. Authenticate with 'Authorization: Bearer <key>'.",
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
        state=State({"settings": settings}),
    )
