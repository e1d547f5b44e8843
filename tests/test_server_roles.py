"""Every route of the real app, tried with no key and with each role's key: a table says who may call what,
so a new route without a role check (or missing from the table) fails this test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.fixtures_server import api_settings, bearer, closed_url, create_keys

ROLES = ("reader", "curator", "admin")
OPEN = None  # no key needed

# (method, path template) -> the lowest role allowed (reader < curator < admin), or OPEN
API: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/v1/articles/{pmid:int}"): "reader",
    ("POST", "/v1/query"): "reader",
    ("POST", "/v1/chat/completions"): "reader",
    ("POST", "/v1/responses"): "reader",
    ("GET", "/v1/models"): "reader",
    ("GET", "/v1/feedback"): "curator",
    ("POST", "/v1/feedback"): "curator",
    ("GET", "/v1/feedback/{feedback_id:str}"): "curator",
    ("PATCH", "/v1/feedback/{feedback_id:str}"): "curator",
    ("GET", "/v1/feedback/{feedback_id:str}/history"): "curator",
    ("GET", "/v1/retune"): "admin",
    ("POST", "/v1/retune"): "admin",
    ("GET", "/v1/retune/{job_id:str}"): "admin",
    ("DELETE", "/v1/retune/{job_id:str}"): "admin",
    ("GET", "/v1/adapters"): "reader",
    ("POST", "/v1/adapters/{name:str}/promote"): "admin",
    ("POST", "/v1/adapters/{name:str}/rollback"): "admin",
    ("GET", "/v1/audit"): "admin",
    ("GET", "/v1/keys"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{name:str}"): "admin",
}
# Documentation and the web workbench (whose pages check the signed-in role themselves: tests/test_ui_*.py)
# are listed by prefix; they are not key-authenticated API routes.
NOT_API_PREFIXES = ("/schema", "/ui")


def routes(app: Litestar) -> list[tuple[str, str]]:
    out = []
    for r in app.routes:
        for m in sorted(getattr(r, "methods", ())):
            if m not in ("OPTIONS", "HEAD"):
                out.append((m, r.path))
    return out


def concrete(path: str) -> str:
    return re.sub(r"\{[^}:]+:(int|str|path)\}", lambda m: "1" if m.group(1) == "int" else "x", path)


@pytest.fixture(scope="module")
def app_and_keys(tmp_path_factory: pytest.TempPathFactory,
                 tiny_model_dir: Path) -> Iterator[tuple[TestClient[Any], dict[str, str], list[tuple[str, str]]]]:
    from server.app import create_app

    settings = api_settings(tmp_path_factory.mktemp("roles") / "home", tiny_model_dir, closed_url())
    keys = create_keys(settings)
    app = create_app(settings)
    with TestClient(app) as c:
        yield c, keys, routes(app)


def test_every_api_route_is_in_the_table(app_and_keys: Any) -> None:
    _, _, found = app_and_keys
    api = [(m, p) for m, p in found if p != "/" and not p.startswith(NOT_API_PREFIXES)]
    missing = sorted(set(api) - set(API))
    assert missing == [], f"routes without an entry in the role table: {missing}"


@pytest.mark.parametrize(("method", "path"), sorted(API))
def test_each_role_gets_what_the_table_says(app_and_keys: Any, method: str, path: str) -> None:
    c, keys, found = app_and_keys
    if (method, path) not in found:
        pytest.skip(f"{method} {path} is not mounted in this build")
    needed = API[(method, path)]
    url = concrete(path)
    kwargs: dict[str, Any] = {"json": {}} if method in ("POST", "PATCH") else {}
    anonymous = c.request(method, url, **kwargs)
    if needed is OPEN:
        assert anonymous.status_code not in (401, 403), (method, path, anonymous.text)
        return
    assert anonymous.status_code == 401, (method, path, anonymous.text)
    for role in ROLES:
        r = c.request(method, url, headers=bearer(keys[role]), **kwargs)
        allowed = ROLES.index(role) >= ROLES.index(needed)
        if allowed:
            assert r.status_code not in (401, 403), (method, path, role, r.text)
        else:
            assert r.status_code == 403, (method, path, role, r.text)
            assert r.json()["error"]["type"] == "permission_error"
