"""The web workbench under ``/ui`` (``/`` redirects there): server-rendered Jinja templates with htmx, signed
session cookies (``server.ui.session``), CSRF on every form, the same services and role guards as the API.

Mounting (``server.app``): ``ROUTE_HANDLERS`` (the ``/ui`` router, the static assets, ``/``),
``template_config()``, ``csrf_config(settings)``, ``make_ui_lifespan(settings)`` after the services' lifespan,
and ``EXCLUDE_FROM_BEARER`` added to the bearer middleware's exclusions.

Add a page: a handler module with ``HANDLERS`` (guards: ``require_role``), listed in ``_PAGES`` below, its
templates under ``templates/`` extending ``base.html``, and a ``views.NAV`` entry for the navigation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from finetune.ratings import RatingStore
from pubmind.errors import PubmindError
from pubmind.settings import Settings
from server.ui import admin, curate, dashboard, pages
from server.ui.facets import FacetCache
from server.ui.render import markdown
from server.ui.session import SessionMiddleware, Sessions, csrf_config
from server.ui.views import ago, error_page

HERE = Path(__file__).parent
UI_STATE = ("ui_sessions", "ui_ratings", "ui_facets")
EXCLUDE_FROM_BEARER = ["^/ui(/|$)", "^/$"]
_PAGES = [pages, curate, admin, dashboard]


def _state(name: str) -> Provide:
    def provide(state: State) -> Any:
        return state[name]

    provide.__name__ = f"provide_{name}"
    return Provide(provide, sync_to_thread=False)


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/ui/")


ui_router = Router(
    "/ui", route_handlers=[h for m in _PAGES for h in m.HANDLERS],
    middleware=[DefineMiddleware(SessionMiddleware)],
    dependencies={name: _state(name) for name in UI_STATE},
    exception_handlers={PubmindError: error_page, HTTPException: error_page},
    include_in_schema=False,
)
static_router = create_static_files_router(path="/ui/static", directories=[HERE / "static"],
                                           include_in_schema=False, cache_control=None)
ROUTE_HANDLERS: list[ControllerRouterHandler] = [ui_router, static_router, root]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    def setup(engine: JinjaTemplateEngine) -> None:
        engine.engine.filters["markdown"] = markdown
        engine.engine.filters["ago"] = ago
        engine.engine.autoescape = True

    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=setup)


def make_ui_lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """The workbench's own state (after the services are up): session signer, ratings store, facet cache."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        ratings = RatingStore(settings.app_db)
        app.state["ui_sessions"] = Sessions(settings)
        app.state["ui_ratings"] = ratings
        app.state["ui_facets"] = FacetCache(settings.corpus_db)
        try:
            yield
        finally:
            ratings.close()

    return lifespan


__all__ = ["EXCLUDE_FROM_BEARER", "ROUTE_HANDLERS", "csrf_config", "make_ui_lifespan", "template_config"]
