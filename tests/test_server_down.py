"""vLLM down (nothing listening at llm.vllm_url) with a real index: fast, clear 503s, never a hang or a 500."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import settings_at
from tests.fixtures_server import api_settings, bearer, create_keys

pytestmark = [pytest.mark.integration]

QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"


def test_vllm_down_is_503(server_home: Path, tiny_model_dir: Path) -> None:
    """vLLM unreachable: answers and chat fail fast with 503 naming the URL; search still works; health 503."""
    from litestar.testing import TestClient

    from server.app import create_app
    from tests.fixtures_server import closed_url

    url = closed_url()
    settings = api_settings(server_home, tiny_model_dir, url)
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    with TestClient(create_app(settings)) as c:
        h = bearer(keys["reader"])
        for body in ({"question": QUESTION}, {"question": QUESTION, "stream": True}):
            r = c.post("/v1/query", json=body, headers=h)
            assert r.status_code == 503, r.text
            assert url in r.json()["error"]["message"], r.text
        chat = {"model": "base", "messages": [{"role": "user", "content": QUESTION}]}
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={**chat, "stream": stream}, headers=h)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "service_unavailable_error", r.text
        assert c.post("/v1/query", json={"question": QUESTION, "mode": "search"}, headers=h).status_code == 200
        health = c.get("/health", headers=bearer(keys["admin"]))
        assert health.status_code == 503
        assert url in health.json()["reason"]


def test_vllm_hanging_times_out_503(server_home: Path, tiny_model_dir: Path) -> None:
    """vLLM accepts the connection but never answers: 503 after llm.request_timeout_seconds, not a hang."""
    import socket
    import time

    from litestar.testing import TestClient

    from server.app import create_app

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        settings = settings_at(server_home, llm={"model": str(tiny_model_dir), "vllm_url": url,
                                                   "request_timeout_seconds": 1.0})
        keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
        with TestClient(create_app(settings), timeout=30) as c:
            t0 = time.monotonic()
            r = c.post("/v1/query", json={"question": QUESTION, "k": 2}, headers=bearer(keys["reader"]))
            assert r.status_code == 503, r.text
            assert "timed out" in r.json()["error"]["message"], r.text
            assert time.monotonic() - t0 < 20
