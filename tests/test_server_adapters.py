"""``GET /v1/adapters`` (issue 10 item 8): readers see names, versions and headline metrics; server paths,
dataset paths, evaluation samples and the key names in the promotion history are for admins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.fixtures_server import api_settings, bearer, closed_url, create_keys

SECRET_SAMPLE = "a held-out answer only admins may read"


@pytest.fixture()
def api(tmp_path: Path, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    from finetune.registry import AdapterRegistry
    from server.app import create_app

    settings = api_settings(tmp_path / "home", tiny_model_dir, closed_url())
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    reg = AdapterRegistry(settings.adapters_dir)
    v = reg.create_version("onco", src, {
        "base_model": str(tiny_model_dir), "dataset": {"path": str(tmp_path / "dataset.jsonl")},
        "evaluation": {"promote": True, "candidate_metrics": {
            "citation_validity": 0.9, "citation_recall": 0.8, "answer_f1": 0.5, "rouge_l": 0.4, "n": 3,
            "samples": [{"question": "q", "answer": SECRET_SAMPLE}]}}})
    reg.promote("onco", v.version, by="admin-key-name", reason="test")
    keys = create_keys(settings)
    with TestClient(create_app(settings)) as c:
        yield {"client": c, "keys": keys, "settings": settings, "tmp": tmp_path}


def test_reader_sees_names_versions_and_headline_metrics_only(api: dict[str, Any]) -> None:
    c, keys = api["client"], api["keys"]
    r = c.get("/v1/adapters", headers=bearer(keys["reader"]))
    assert r.status_code == 200, r.text
    (onco,) = r.json()["data"]
    assert onco["name"] == "onco"
    assert onco["current_lora_name"] == "onco@v1"
    assert onco["versions"][0]["metrics"] == {"citation_validity": 0.9, "citation_recall": 0.8, "answer_f1": 0.5,
                                              "rouge_l": 0.4}
    assert onco["versions"][0]["promoted_by_gate"] is True
    text = json.dumps(r.json())
    for secret in (str(api["tmp"]), str(api["settings"].adapters_dir), SECRET_SAMPLE, "admin-key-name", "manifest"):
        assert secret not in text, secret


def test_admin_sees_the_full_record(api: dict[str, Any]) -> None:
    c, keys = api["client"], api["keys"]
    text = c.get("/v1/adapters", headers=bearer(keys["admin"])).text
    assert str(api["settings"].adapters_dir) in text
    assert SECRET_SAMPLE in text
    assert "admin-key-name" in text
