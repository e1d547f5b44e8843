"""``/v1/keys`` (admin): create (the key returned once), list (prefixes, never keys), revoke; each change in the
audit trail with the acting admin's key id. vLLM is not needed (a closed URL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from pubmind.audit import AuditLog
from tests.fixtures_server import api_settings, bearer, closed_url, create_keys


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[TestClient[Any], dict[str, str], Any]]:
    from server.app import create_app

    settings = api_settings(tmp_path_factory.mktemp("keys") / "home", tiny_model_dir, closed_url())
    keys = create_keys(settings)
    with TestClient(create_app(settings)) as c:
        yield c, keys, settings


def test_created_key_works_once_listed_by_prefix_and_revoked(api: Any) -> None:
    c, keys, settings = api
    admin = bearer(keys["admin"])
    r = c.post("/v1/keys", json={"name": "robot", "role": "reader"}, headers=admin)
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert c.get("/v1/adapters", headers=bearer(key)).status_code == 200
    listing = c.get("/v1/keys", headers=admin).text
    assert key not in listing
    assert key[:8] in listing
    assert c.delete("/v1/keys/robot", headers=admin).status_code == 200
    assert c.get("/v1/adapters", headers=bearer(key)).status_code == 401
    audit = AuditLog(settings.app_db)
    created, revoked = audit.query(action="key.create")[0], audit.query(action="key.revoke")[0]
    audit.close()
    admin_id = next(k["key_id"] for k in c.get("/v1/keys", headers=admin).json()["data"] if k["role"] == "admin")
    assert created.key_id == admin_id
    assert revoked.target == r.json()["key_id"]


def test_revoked_keys_listed_only_with_all(api: Any) -> None:
    c, keys, _ = api
    admin = bearer(keys["admin"])
    c.post("/v1/keys", json={"name": "temp", "role": "curator"}, headers=admin)
    c.delete("/v1/keys/temp", headers=admin)
    names = [k["name"] for k in c.get("/v1/keys", headers=admin).json()["data"]]
    every = [k["name"] for k in c.get("/v1/keys?all=true", headers=admin).json()["data"]]
    assert "temp" not in names
    assert "temp" in every


def test_bad_role_is_a_400_naming_it(api: Any) -> None:
    c, keys, _ = api
    r = c.post("/v1/keys", json={"name": "x", "role": "root"}, headers=bearer(keys["admin"]))
    assert r.status_code == 400
    assert "role" in r.json()["error"]["message"]


def test_revoking_an_unknown_key_is_a_404(api: Any) -> None:
    c, keys, _ = api
    r = c.delete("/v1/keys/nobody", headers=bearer(keys["admin"]))
    assert r.status_code == 404
