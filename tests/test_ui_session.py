"""Workbench sign-in, sessions, CSRF and role checks over HTTP (httpx against the live app; no browser)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import ui_support
from tests.ui_support import UiLive, csrf

ui_live = ui_support.ui_live  # the module's server

pytestmark = [pytest.mark.integration, pytest.mark.network]

QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"


def test_root_redirects_to_ui(ui_live: UiLive) -> None:
    with ui_live.client() as c:
        r = c.get("/")
    assert r.headers["location"] == "/ui/"


def test_pages_need_a_session(ui_live: UiLive) -> None:
    with ui_live.client() as c:
        r = c.get("/ui/ask")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/ui/login")


def test_wrong_key_is_refused(ui_live: UiLive) -> None:
    with ui_live.client() as c:
        r = c.post("/ui/login", data={"key": "pm_not-a-key", "_csrf_token": csrf(c)})
    assert r.status_code == 401
    assert "pm_session" not in r.cookies


def test_session_cookie_is_httponly_samesite(ui_live: UiLive) -> None:
    with ui_live.client() as c:
        r = c.post("/ui/login", data={"key": ui_live.keys["reader"], "_csrf_token": csrf(c)})
    header = r.headers["set-cookie"].lower()
    assert "httponly" in header
    assert "samesite=lax" in header
    assert "max-age=" in header


def test_forged_cookie_is_refused(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        c.cookies.set("pm_session", c.cookies["pm_session"][:-3] + "AAA")
        r = c.get("/ui/ask")
    assert r.status_code == 303


def test_bearer_key_does_not_open_the_ui(ui_live: UiLive) -> None:
    with ui_live.client() as c:
        r = c.get("/ui/ask", headers={"Authorization": f"Bearer {ui_live.keys['admin']}"})
    assert r.status_code == 303


def test_api_bearer_auth_unchanged(ui_live: UiLive) -> None:
    """/v1 still needs the bearer key; a workbench session cookie does not open it."""
    with ui_live.client("admin") as c:
        r = c.get("/v1/adapters")
    assert r.status_code == 401


def test_form_without_csrf_token_is_refused(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION})
    assert r.status_code == 403


def test_form_with_a_forged_csrf_token_is_refused(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION, "_csrf_token": "0" * 128})
    assert r.status_code == 403


def test_logout_ends_the_session(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        r = c.post("/ui/logout", data={"_csrf_token": csrf(c)})
        assert r.status_code == 303
        assert c.get("/ui/ask").status_code == 303


def test_revoked_key_ends_the_session(ui_live: UiLive) -> None:
    from server.auth import KeyStore

    ks = KeyStore(ui_live.settings.app_db)
    try:
        key = ks.create("revoke-me", "reader")
        with ui_live.client() as c:
            c.post("/ui/login", data={"key": key, "_csrf_token": csrf(c)})
            assert c.get("/ui/ask").status_code == 200
            ks.revoke("revoke-me")
            assert c.get("/ui/ask").status_code == 303
    finally:
        ks.close()


def test_next_is_local_only(ui_live: UiLive) -> None:
    with ui_live.client() as c:
        r = c.post("/ui/login", data={"key": ui_live.keys["reader"], "next": "https://evil.example/ui/x",
                                      "_csrf_token": csrf(c)})
    assert r.headers["location"] == "/ui/ask"


def test_stream_relays_events_and_renders_sanitised_html(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION, "model": "base"}, headers={"x-csrftoken": csrf(c)})
    assert r.status_code == 200, r.text
    names = [line.removeprefix("event: ") for line in r.text.splitlines() if line.startswith("event: ")]
    assert names[:2] == ["evidence", "cards"]
    assert names[-3:] == ["citations", "answer", "done"]
    assert "<script>" not in r.text.split("event: answer", 1)[1]


def test_bad_filter_is_a_400_naming_the_field(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION, "year_from": "soon"},
                   headers={"x-csrftoken": csrf(c), "x-ui-fetch": "1"})
    assert r.status_code == 400
    assert "year_from" in r.text


def _evidence(text: str) -> list[dict[str, Any]]:
    import json

    block = text.split("event: evidence\ndata: ", 1)[1].split("\n\n", 1)[0]
    return json.loads(block)["evidence"]


def test_ask_page_suggests_mesh_from_the_corpus(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        html = c.get("/ui/ask").text
    assert '<option value="Apoptosis">' in html


def test_mesh_filter_reaches_the_query(ui_live: UiLive, server_corpus: list[Any]) -> None:
    tagged = {a.pmid for a in server_corpus if any(m.descriptor == "Apoptosis" for m in a.mesh)}
    with ui_live.client("reader") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION, "mesh": "Apoptosis"}, headers={"x-csrftoken": csrf(c)})
    got = {e["pmid"] for e in _evidence(r.text)}
    assert got
    assert got <= tagged


def test_year_filter_reaches_the_query(ui_live: UiLive) -> None:
    with ui_live.client("reader") as c:
        r = c.post("/ui/ask/stream", data={"question": QUESTION, "year_from": "2012"}, headers={"x-csrftoken": csrf(c)})
    years = [e["year"] for e in _evidence(r.text)]
    assert years
    assert [y for y in years if y is None or y < 2012] == []
