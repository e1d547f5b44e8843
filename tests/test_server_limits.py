"""Every request value is bounded (issue 10 item 9): absurd values are a 400 naming the field, never a 500 and
never work. Run against the real app over a real index (vLLM down: nothing here needs generation)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.fixtures_server import api_settings, bearer, closed_url, create_keys

pytestmark = [pytest.mark.integration]

HUGE = 10**20  # 20 digits: beyond SQLite's and numpy's int64
QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
SEARCH = {"question": QUESTION, "mode": "search"}
USER = {"role": "user", "content": "Does aspirin prevent colorectal cancer?"}
CHAT = {"model": "base", "messages": [USER]}

# (role, method, path, body, field the error names)
CASES: list[tuple[str, str, str, Any, str]] = [
    ("reader", "POST", "/v1/query", {**SEARCH, "filters": {"year_from": HUGE}}, "filters.year_from"),
    ("reader", "POST", "/v1/query", {**SEARCH, "filters": {"year_to": -HUGE}}, "filters.year_to"),
    ("reader", "POST", "/v1/query", {**SEARCH, "filters": {"year_from": 12345}}, "filters.year_from"),
    ("reader", "POST", "/v1/query", {**SEARCH, "filters": {"journals": ["J"] * 1000}}, "filters.journals"),
    ("reader", "POST", "/v1/query", {**SEARCH, "filters": {"mesh": ["m" * 10_000]}}, "filters.mesh"),
    ("reader", "POST", "/v1/query", {**SEARCH, "k": HUGE}, "k"),
    ("reader", "POST", "/v1/query", {**SEARCH, "model": "m" * 1000}, "model"),
    ("reader", "POST", "/v1/query", {"question": QUESTION, "max_tokens": HUGE}, "max_tokens"),
    ("reader", "POST", "/v1/chat/completions", {**CHAT, "messages": [USER] * 101}, "messages"),
    ("reader", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": "x" * 60_000}, USER]}, "messages"),
    ("reader", "POST", "/v1/chat/completions", {**CHAT, "temperature": 1e308}, "temperature"),
    ("reader", "POST", "/v1/chat/completions", {**CHAT, "seed": 2**70}, "seed"),
    ("reader", "POST", "/v1/chat/completions", {**CHAT, "stop": ["x"] * 10}, "stop"),
    ("reader", "POST", "/v1/chat/completions", {**CHAT, "filters": {"year_from": HUGE}}, "filters.year_from"),
    ("reader", "GET", f"/v1/articles/{HUGE}", None, "pmid"),
    ("curator", "GET", f"/v1/feedback?offset={HUGE}", None, "offset"),
    ("curator", "POST", "/v1/feedback", {"corrected_answer": "a", "question": "q", "pmids": [HUGE]}, "pmids"),
    ("admin", "POST", "/v1/retune", {"adapter": "a", "min_examples": HUGE}, "min_examples"),
    ("admin", "POST", "/v1/adapters/a/promote", {"version": HUGE}, "version"),
]


@pytest.fixture(scope="module")
def api(server_home: Path, tiny_model_dir: Path) -> Iterator[tuple[TestClient[Any], dict[str, str]]]:
    from server.app import create_app

    settings = api_settings(server_home, tiny_model_dir, closed_url(), max_messages=100,
                            max_conversation_chars=50_000)
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    with TestClient(create_app(settings)) as c:
        yield c, keys


def test_search_works_before_the_limits_are_tried(api: tuple[TestClient[Any], dict[str, str]]) -> None:
    c, keys = api
    r = c.post("/v1/query", json={**SEARCH, "filters": {"year_from": 2000}}, headers=bearer(keys["reader"]))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("role", "method", "path", "body", "field"), CASES,
                         ids=[f"{c[2]}:{c[4]}" for c in CASES])
def test_absurd_value_is_400_naming_the_field(api: tuple[TestClient[Any], dict[str, str]], role: str, method: str,
                                              path: str, body: Any, field: str) -> None:
    c, keys = api
    r = c.request(method, path, json=body, headers=bearer(keys[role]))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert field in f"{error['param']} {error['message']}", error
