"""Server unit tests (no vLLM, no index): API keys, auth (401/403), error mapping into OpenAI's shape, body
validation, limits, rate limiting, protocol helpers, the vLLM client's error mapping, the CLI."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, Router, get
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.testing import TestClient

from pubmind.errors import Conflict, InvalidInput, NotFound, RateLimited, ServiceUnavailable, UpstreamError
from server.auth import AuthMiddleware, KeyStore, Principal, require_role
from server.errors import EXCEPTION_HANDLERS
from server.ratelimit import RateLimiter
from tests.fixtures_server import api_settings, bearer, closed_url, create_keys

OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


def _who(p: Principal | None) -> tuple[str, str] | None:
    return None if p is None else (p.name, p.role)


def assert_openai_error(resp: httpx.Response, status: int, *, param: str | None = None,
                        contains: str = "") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == OPENAI_ERROR_KEYS, body
    if param is not None:
        assert body["error"]["param"] == param, body
    assert contains.lower() in body["error"]["message"].lower(), body
    return body["error"]


# ---- key store ----------------------------------------------------------------------------------------
def test_keystore_create_authenticate_revoke(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "app.sqlite")
    key = ks.create("alice", "curator")
    assert re.fullmatch(r"pm_[A-Za-z0-9_-]{43}", key)
    assert _who(ks.authenticate(key)) == ("alice", "curator")
    assert ks.authenticate(key + "x") is None
    assert ks.authenticate("not-a-key") is None
    raw = (tmp_path / "app.sqlite").read_bytes()
    assert key.encode() not in raw  # stored hashed only
    with pytest.raises(Conflict, match="alice"):
        ks.create("alice", "reader")
    with pytest.raises(InvalidInput, match="role must be one of"):
        ks.create("bob", "root")
    ks.revoke("alice")
    assert ks.authenticate(key) is None
    with pytest.raises(NotFound, match="alice"):
        ks.revoke("alice")
    key2 = ks.create("alice", "reader")  # the name is free again after revocation
    assert _who(ks.authenticate(key2)) == ("alice", "reader")
    assert [k.name for k in ks.list()] == ["alice"]
    assert len(ks.list(include_revoked=True)) == 2


def test_role_order() -> None:
    admin, curator, reader = Principal("a", "admin"), Principal("c", "curator"), Principal("r", "reader")
    assert admin.allows("curator")
    assert admin.allows("reader")
    assert curator.allows("reader")
    assert not reader.allows("curator")
    assert not curator.allows("admin")
    with pytest.raises(InvalidInput, match="role must be one of"):
        require_role("superuser")


def test_rate_limiter_sliding_window() -> None:
    now = [1000.0]
    rl = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        rl.check("k")
    with pytest.raises(RateLimited, match="3 requests per minute") as e:
        rl.check("k")
    assert e.value.retry_after == 60  # type: ignore[attr-defined]
    rl.check("other")  # per key
    now[0] += 30
    with pytest.raises(RateLimited):
        rl.check("k")
    now[0] += 30.5
    rl.check("k")  # the first three fell out of the window


# ---- guards on a minimal app (the same middleware and error mapping as the real one) -------------------
@pytest.fixture()
def guarded_client(tmp_path: Path) -> Any:
    @get("/v1/read", guards=[require_role("reader")])
    async def read(request: Request) -> dict[str, str]:
        return {"name": request.user.name, "role": request.user.role}

    @get("/v1/curate", guards=[require_role("curator")])
    async def curate() -> dict[str, bool]:
        return {"ok": True}

    @get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    ks = KeyStore(tmp_path / "app.sqlite")
    keys = {r: ks.create(r, r) for r in ("reader", "curator", "admin")}
    app = Litestar([Router("/", route_handlers=[read, curate, boom])],
                   middleware=[DefineMiddleware(AuthMiddleware)], exception_handlers=EXCEPTION_HANDLERS,
                   state=State({"key_store": ks, "limiter": RateLimiter(1000)}))
    with TestClient(app) as c:
        yield c, keys


def test_guards_401_403(guarded_client: Any) -> None:
    c, keys = guarded_client
    assert_openai_error(c.get("/v1/read"), 401, contains="missing API key")
    assert_openai_error(c.get("/v1/read", headers={"Authorization": "Basic abc"}), 401, contains="Bearer")
    assert_openai_error(c.get("/v1/read", headers=bearer("pm_wrong")), 401, contains="invalid or revoked")
    assert c.get("/v1/read", headers=bearer(keys["reader"])).json() == {"name": "reader", "role": "reader"}
    err = assert_openai_error(c.get("/v1/curate", headers=bearer(keys["reader"])), 403, contains="needs role 'curator'")
    assert err["type"] == "permission_error"
    assert c.get("/v1/curate", headers=bearer(keys["curator"])).json() == {"ok": True}
    assert c.get("/v1/curate", headers=bearer(keys["admin"])).json() == {"ok": True}


def test_unhandled_error_is_generic_500(guarded_client: Any) -> None:
    c, keys = guarded_client
    err = assert_openai_error(c.get("/v1/boom", headers=bearer(keys["reader"])), 500, contains="RuntimeError")
    assert "secret internals" not in err["message"]


# ---- the real app, without index and with vLLM down ---------------------------------------------------
@pytest.fixture()
def app_settings(tmp_path: Path, tiny_model_dir: Path) -> Any:
    return api_settings(tmp_path / "home", tiny_model_dir, closed_url(), max_body_bytes=4096,
                        max_question_chars=200)


@pytest.fixture()
def client(app_settings: Any) -> Any:
    from server.app import create_app

    keys = create_keys(app_settings)
    with TestClient(create_app(app_settings)) as c:
        yield c, keys


def test_health_503_names_both_reasons(client: Any) -> None:
    c, _ = client
    r = c.get("/health")  # no key needed
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert "vLLM is not reachable" in body["reason"]
    assert "search index is not available" in body["reason"]


def test_health_hides_internals_without_an_admin_key(client: Any, app_settings: Any) -> None:
    """Issue 10 item 8: /health needs no key, so it shows status and reason only; the vLLM URL, pid and index
    folder are for admins."""
    c, keys = client
    url, folder = app_settings.llm.vllm_url, str(app_settings.index_dir)
    for headers in ({}, bearer(keys["reader"]), bearer(keys["curator"]), bearer("pm_not-a-key")):
        r = c.get("/health", headers=headers)
        assert set(r.json()) == {"status", "reason"}, r.text
        assert url not in r.text
        assert folder not in r.text
    admin = c.get("/health", headers=bearer(keys["admin"])).json()
    assert admin["vllm"]["url"] == url
    assert admin["versions"]["torch"] == importlib.metadata.version("torch")  # the stack, for admins only
    assert admin["versions"]["pubmind"] == importlib.metadata.version("pubmind")
    assert url in admin["reason"]
    assert folder in admin["reason"]


def test_query_auth_and_validation(client: Any) -> None:
    c, keys = client
    h = bearer(keys["reader"])
    assert_openai_error(c.post("/v1/query", json={"question": "x"}), 401)
    assert_openai_error(c.post("/v1/query", content=b'{"question": ', headers={**h, "content-type": "application/json"}),
                        400, contains="not valid JSON")
    assert_openai_error(c.post("/v1/query", json={}, headers=h), 400, param="question", contains="missing required field")
    assert_openai_error(c.post("/v1/query", json={"question": 5}, headers=h), 400, param="question",
                        contains="Expected `str`, got `int`")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "k": "ten"}, headers=h), 400, param="k")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "mode": "chat"}, headers=h), 400, param="mode")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "colour": 1}, headers=h), 400,
                        contains="unknown field `colour`")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "filters": {"year_form": 1}}, headers=h), 400,
                        contains="year_form")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "k": 0}, headers=h), 400, param="k",
                        contains="between 1 and 100")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "k": 101}, headers=h), 400, param="k")
    assert_openai_error(c.post("/v1/query", json={"question": "   "}, headers=h), 400, param="question",
                        contains="must not be empty")
    assert_openai_error(c.post("/v1/query", json={"question": "q" * 201}, headers=h), 400, param="question",
                        contains="limit is 200")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "max_tokens": 10_000}, headers=h), 400,
                        param="max_tokens")
    assert_openai_error(c.post("/v1/query", json={"question": "x" * 5000}, headers=h), 413,
                        contains="too large")
    # a well-formed request without an index -> 503 naming the cause
    assert_openai_error(c.post("/v1/query", json={"question": "Does aspirin help?"}, headers=h), 503,
                        contains="no vector index")
    assert_openai_error(c.post("/v1/query", json={"question": "x", "mode": "search"}, headers=h), 503)


def test_unknown_model_404_openai_shape(client: Any) -> None:
    c, keys = client
    h = bearer(keys["reader"])
    err = assert_openai_error(c.post("/v1/query", json={"question": "x", "model": "gpt-4"}, headers=h), 404,
                              param="model", contains="'gpt-4' does not exist")
    assert err["code"] == "model_not_found"
    body = {"model": "nope@v3", "messages": [{"role": "user", "content": "hi"}]}
    assert_openai_error(c.post("/v1/chat/completions", json=body, headers=h), 404, param="model")
    assert_openai_error(c.post("/v1/chat/completions", json={**body, "model": "bad@@x"}, headers=h), 400,
                        param="model")


def test_chat_validation(client: Any) -> None:
    c, keys = client
    h = bearer(keys["reader"])
    url = "/v1/chat/completions"
    assert_openai_error(c.post(url, json={"messages": []}, headers=h), 400, param="model")
    assert_openai_error(c.post(url, json={"model": "base", "messages": []}, headers=h), 400, param="messages")
    assert_openai_error(c.post(url, json={"model": "base", "messages": [{"role": "assistant", "content": "x"}]},
                               headers=h), 400, contains="last message must have role 'user'")
    assert_openai_error(c.post(url, json={"model": "base", "messages": [{"role": "wizard", "content": "x"}]},
                               headers=h), 400, param="messages[0].role")
    assert_openai_error(c.post(url, json={"model": "base", "n": 2, "messages": [{"role": "user", "content": "x"}]},
                               headers=h), 400, param="n")
    assert_openai_error(c.post(url, json={"model": "base", "logit_bias": {"1": 500}, "messages": []}, headers=h), 400,
                        contains="logit_bias")
    for choice in ("required", {"type": "function", "function": {"name": "search"}}):
        assert_openai_error(c.post(url, json={"model": "base", "tool_choice": choice,
                                              "messages": [{"role": "user", "content": "x"}]}, headers=h), 400,
                            param="tool_choice", contains="never calls tools")
    img = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert_openai_error(c.post(url, json={"model": "base", "messages": img}, headers=h), 400,
                        contains="only 'text' parts")


def test_models_articles_metrics_docs(client: Any) -> None:
    c, keys = client
    h = bearer(keys["reader"])
    models = c.get("/v1/models", headers=h).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["base", "base:plain"]
    assert_openai_error(c.get("/v1/models"), 401)
    assert_openai_error(c.get("/v1/articles/123", headers=h), 404, param="pmid", contains="PMID 123")
    assert_openai_error(c.get("/v1/articles/abc", headers=h), 404)  # not an int: no such route
    assert_openai_error(c.get("/v1/query", headers=h), 405)
    spec = c.get("/schema/openapi.json").json()
    assert {"/v1/query", "/v1/chat/completions", "/v1/models", "/health"} <= set(spec["paths"])
    text = c.get("/metrics").text
    assert 'pubmind_requests_total{method="GET",route="/v1/models",status="200"} 1.0' in text
    assert 'route="/v1/models",status="401"' in text


def test_revoked_key_rejected(client: Any, app_settings: Any) -> None:
    c, keys = client
    assert c.get("/v1/models", headers=bearer(keys["reader"])).status_code == 200
    ks = KeyStore(app_settings.app_db)
    ks.revoke("reader")
    ks.close()
    assert_openai_error(c.get("/v1/models", headers=bearer(keys["reader"])), 401, contains="revoked")


def test_rate_limit_429(tmp_path: Path, tiny_model_dir: Path) -> None:
    from server.app import create_app

    s = api_settings(tmp_path / "home", tiny_model_dir, closed_url(), rate_limit_per_minute=3)
    keys = create_keys(s)
    with TestClient(create_app(s)) as c:
        for _ in range(3):
            assert c.get("/v1/models", headers=bearer(keys["reader"])).status_code == 200
        r = c.get("/v1/models", headers=bearer(keys["reader"]))
        assert_openai_error(r, 429, contains="rate limit exceeded for API key 'reader'")
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/models", headers=bearer(keys["curator"])).status_code == 200  # per key
        assert c.get("/health").status_code == 503  # open paths are not limited


def test_auth_off(tmp_path: Path, tiny_model_dir: Path) -> None:
    from server.app import create_app

    s = api_settings(tmp_path / "home", tiny_model_dir, closed_url(), auth=False)
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/models").status_code == 200


# ---- protocol helpers ---------------------------------------------------------------------------------
def test_split_conversation() -> None:
    from server.chat.protocol import ChatMessage, ContentPart
    from server.chat.service import split_conversation

    msgs = [ChatMessage(role="system", content="be nice"), ChatMessage(role="user", content="q1"),
            ChatMessage(role="assistant", content="a1"),
            ChatMessage(role="user", content=[ContentPart(type="text", text="q2"), ContentPart(type="text", text="more")])]
    q, hist = split_conversation(msgs)
    assert q == "q2\nmore"
    assert hist == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert split_conversation([ChatMessage(role="tool", content="x"), ChatMessage(role="user", content="q")]) == ("q", [])


def test_after_answer_lists_only_supported() -> None:
    from server.chat.render import after_answer
    from server.query.protocol import Citation

    c = Citation(pmid=11, title="T", journal="J", year=2001, url="https://pubmed.ncbi.nlm.nih.gov/11/",
                 snippet="s", score=1.0)
    text = after_answer([c], [99], [])
    assert "- [T](https://pubmed.ncbi.nlm.nih.gov/11/). J, 2001 (PMID:11)" in text
    refs, warning = text.split("Warning")
    assert "99" not in refs
    assert "not sources: 99" in warning
    assert after_answer([], [], []) == ""


# ---- vLLM client --------------------------------------------------------------------------------------
def test_vllm_client_down_is_503_naming_url() -> None:
    from generation.vllm_client import VllmClient

    url = closed_url()

    async def run() -> None:
        client = VllmClient(url, timeout_seconds=2)
        try:
            for call in (client.health(), client.models(), client.load_lora_adapter("a@v1", "/x"),
                         client.chat([{"role": "user", "content": "x"}], "base", max_tokens=1)):
                with pytest.raises(ServiceUnavailable, match=re.escape(url)):
                    await call
            with pytest.raises(ServiceUnavailable, match=re.escape(url)):
                async for _ in client.chat_stream([{"role": "user", "content": "x"}], "base", max_tokens=1):
                    pass
        finally:
            await client.aclose()

    asyncio.run(run())


def test_vllm_client_error_mapping() -> None:
    from generation.vllm_client import VllmClient, _raise_for

    def resp(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body, request=httpx.Request("POST", "http://v/x"))

    err = {"error": {"message": "This model's maximum context length is 1024", "type": "BadRequestError",
                     "param": None, "code": 400}}
    with pytest.raises(InvalidInput, match="maximum context length is 1024"):
        _raise_for(resp(400, err), "chat completion")
    with pytest.raises(NotFound, match="does not exist"):
        _raise_for(resp(404, {"object": "error", "message": "The model `x` does not exist."}), "chat")
    with pytest.raises(UpstreamError, match=r"\(500\): boom"):
        _raise_for(resp(500, {"error": {"message": "boom"}}), "chat")
    _raise_for(resp(200, {}), "chat")
    with pytest.raises(InvalidInput, match="must start with http"):
        VllmClient("localhost:8000")

    async def healthy() -> bool:
        async with VllmClient(closed_url(), timeout_seconds=2) as c:
            return await c.is_healthy()

    assert asyncio.run(healthy()) is False


# ---- CLI ----------------------------------------------------------------------------------------------
def test_keys_cli(cli: Any, settings: Any) -> None:
    r = cli("keys", "create", "--role", "curator", "--name", "carol")
    assert r.code == 0, r.err
    key = r.out.strip().splitlines()[-1]
    assert key.startswith("pm_")
    ks = KeyStore(settings.app_db)
    assert _who(ks.authenticate(key)) == ("carol", "curator")
    r = cli("keys", "create", "--role", "reader", "--name", "carol")
    assert r.code == 1
    assert "already exists" in r.err
    r = cli("keys", "list")
    assert r.code == 0
    assert '"name": "carol"' in r.out
    assert key not in r.out
    r = cli("keys", "revoke", "carol")
    assert r.code == 0
    assert ks.authenticate(key) is None
    r = cli("keys", "revoke", "carol")
    assert r.code == 1
    assert "no active API key named 'carol'" in r.err


def test_query_batcher_coalesces_concurrent_calls() -> None:
    import threading
    import time

    import numpy as np

    from server.batching import QueryBatcher

    class SlowEmbedder:
        dim = 2

        def __init__(self) -> None:
            self.batches: list[int] = []
            self.fingerprint = {"model": "slow"}

        def encode_queries(self, texts: list[str]) -> np.ndarray:
            self.batches.append(len(texts))
            time.sleep(0.05)
            if "boom" in texts:
                raise ValueError("bad text")
            return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)

    emb = SlowEmbedder()
    qb = QueryBatcher(emb, max_batch=4)
    assert qb.fingerprint == {"model": "slow"}  # delegated
    assert qb.encode_queries(["abc"]).tolist() == [[3, 0]]  # alone: pass-through
    out: dict[int, list[float]] = {}

    def call(i: int) -> None:
        out[i] = qb.encode_queries(["x" * i])[0].tolist()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: v[0] for i, v in out.items()} == {i: float(i) for i in range(1, 11)}  # each got its own row
    assert sum(emb.batches[1:]) == 10
    assert max(emb.batches) <= 4
    assert len(emb.batches) - 1 < 10
    with pytest.raises(ValueError, match="bad text"):
        qb.encode_queries(["boom"])
    assert qb.encode_queries(["ok"]).shape == (1, 2)  # still usable after an error


def test_vllm_client_timeout_is_503() -> None:
    """A vLLM that accepts connections but never answers: the request times out as ServiceUnavailable."""
    import socket

    from generation.vllm_client import VllmClient

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # connections complete in the backlog; nobody ever reads or answers
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"

        async def run() -> bool:
            async with VllmClient(url, timeout_seconds=0.5) as c:
                with pytest.raises(ServiceUnavailable, match=re.escape(f"vLLM at {url} timed out on /v1/chat/completions")):
                    await c.chat([{"role": "user", "content": "x"}], "base", max_tokens=1)
                return await c.is_healthy()

        assert asyncio.run(run()) is False
