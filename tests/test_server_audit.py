"""The audit trail through the API: corrections submitted and reviewed are recorded with the acting key's
id and role; GET /v1/audit is admin-only; a correction's history lists every review."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from server.auth import KeyStore
from tests.fixtures_finetune import private_home
from tests.fixtures_server import api_settings, bearer, closed_url, create_keys

pytestmark = pytest.mark.integration


@pytest.fixture()
def client(tmp_path: Path, server_home: Path, tiny_model_dir: Path,
           server_corpus: list[Any]) -> Iterator[tuple[TestClient[Any], dict[str, str], dict[str, str], int]]:
    from server.app import create_app

    settings = api_settings(private_home(server_home, tmp_path / "home"), tiny_model_dir, closed_url())
    keys = create_keys(settings)
    ks = KeyStore(settings.app_db)
    ids = {role: ks.key_id(role) for role in keys}
    ks.close()
    with TestClient(create_app(settings)) as c:
        yield c, keys, ids, server_corpus[0].pmid


def test_corrections_and_reviews_are_audited(client: Any) -> None:
    c, keys, ids, pmid = client
    r = c.post("/v1/feedback", headers=bearer(keys["curator"]),
               json={"question": "Does it work?", "corrected_answer": f"It does [PMID:{pmid}].", "pmids": [pmid]})
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    r = c.patch(f"/v1/feedback/{fid}", headers=bearer(keys["curator"]), json={"status": "accepted"})
    assert r.status_code == 403  # its author may not review it (server.curators_review_own is off)
    assert "another curator must review it" in r.json()["error"]["message"]
    r = c.patch(f"/v1/feedback/{fid}", headers=bearer(keys["admin"]), json={"status": "rejected"})
    assert r.status_code == 200, r.text
    r = c.patch(f"/v1/feedback/{fid}", headers=bearer(keys["admin"]), json={"status": "accepted"})
    assert r.status_code == 200, r.text

    rows = c.get("/v1/audit", headers=bearer(keys["admin"]), params={"target": fid}).json()["data"]
    assert [row["action"] for row in rows] == ["correction.accept", "correction.reject", "correction.submit"]
    assert [row["key_id"] for row in rows] == [ids["admin"], ids["admin"], ids["curator"]]
    assert rows[0]["before"] == {"status": "rejected"}
    assert rows[2]["role"] == "curator"

    history = c.get(f"/v1/feedback/{fid}/history", headers=bearer(keys["curator"])).json()
    assert [h["action"] for h in history] == ["correction.submit", "correction.reject", "correction.accept"]


def test_audit_is_admin_only_and_validates_its_filters(client: Any) -> None:
    c, keys, _, _ = client
    assert c.get("/v1/audit").status_code == 401
    assert c.get("/v1/audit", headers=bearer(keys["reader"])).status_code == 403
    assert c.get("/v1/audit", headers=bearer(keys["curator"])).status_code == 403
    assert c.get("/v1/audit", headers=bearer(keys["admin"])).status_code == 200
    r = c.get("/v1/audit", headers=bearer(keys["admin"]), params={"action": "key.steal"})
    assert r.status_code == 400
    assert "key.steal" in r.json()["error"]["message"]
    r = c.get("/v1/audit", headers=bearer(keys["admin"]), params={"limit": 10**9})
    assert r.status_code == 400
    assert c.get("/v1/feedback/nope/history", headers=bearer(keys["curator"])).status_code == 404
