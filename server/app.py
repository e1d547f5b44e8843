"""``create_app(settings)``: the Litestar application.

One shape per endpoint family, ``server/<family>/{protocol,service,routes}.py``: query (``/v1/query``), chat
(``/v1/chat/completions``, ``/v1/models``), responses (``/v1/responses``), system (``/health``, ``/metrics``,
``/v1/articles/{pmid}``), feedback, retune, adapters. Services are built in the lifespan (``server.services``) and injected by name.
OpenAPI docs at ``/schema`` (``/schema/swagger``, ``/schema/redoc``, ``/schema/openapi.json``).
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from generation.supervisor import VllmSupervisor
from pubmind.settings import Settings
from server.adapters.routes import router as adapters_router
from server.audit.routes import router as audit_router
from server.auth import OPEN_PATHS, AuthMiddleware
from server.chat.routes import router as chat_router
from server.errors import EXCEPTION_HANDLERS
from server.feedback.routes import router as feedback_router
from server.keys.routes import router as keys_router
from server.metrics import Metrics, MetricsMiddleware
from server.query.routes import router as query_router
from server.responses.routes import router as responses_router
from server.retune.routes import router as retune_router
from server.services import SERVICE_NAMES, make_lifespan
from server.system.routes import router as system_router
from server.ui.routes import (
    EXCLUDE_FROM_BEARER,
    ROUTE_HANDLERS,
    csrf_config,
    make_ui_lifespan,
    template_config,
)

ROUTERS = [system_router, query_router, chat_router, responses_router, feedback_router, retune_router, adapters_router,
           audit_router, keys_router]


def _provider(name: str) -> Provide:
    def provide(state: State) -> Any:
        return state[name]

    provide.__name__ = f"provide_{name}"
    return Provide(provide, sync_to_thread=False)


DEPENDENCIES = {name: _provider(name) for name in SERVICE_NAMES}


def create_app(settings: Settings, *, supervisor: VllmSupervisor | None = None, scheduled: bool = False) -> Litestar:
    """The API for ``settings``. vLLM is reached at ``supervisor.url`` when a supervisor is given, else at
    ``settings.llm.vllm_url``. Services are built in the lifespan, so creating the app is cheap and tests pass
    their own settings."""
    metrics = Metrics()
    return Litestar(
        route_handlers=[*ROUTERS, *ROUTE_HANDLERS],  # ROUTE_HANDLERS: the web workbench (/ui, / redirects)
        lifespan=[make_lifespan(settings, supervisor, metrics, scheduled=scheduled), make_ui_lifespan(settings)],
        dependencies=DEPENDENCIES,
        middleware=[
            DefineMiddleware(MetricsMiddleware, metrics=metrics),
            DefineMiddleware(AuthMiddleware, exclude=[*(f"^{p}" for p in OPEN_PATHS), *EXCLUDE_FROM_BEARER]),
        ],
        template_config=template_config(),
        csrf_config=csrf_config(settings),  # /ui only (session cookies); the bearer API has no cookies
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="pubmind", version="0.1.0", path="/schema",
            description="PubMed literature assistant: cited answers (OpenAI-compatible), search, feedback, "
            "adapters. Authenticate with 'Authorization: Bearer <key>'.",
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
    )
