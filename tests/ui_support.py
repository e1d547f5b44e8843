"""Support for the workbench tests (``tests/test_ui_*.py``): a fake OpenAI-compatible vLLM that streams a
fixed-shape answer (one supported citation of the first evidence PMID, one unsupported PMID and a ``<script>``
that must never run), the API + workbench served by uvicorn over a private copy of the 50-article test corpus,
one key per role (and a second curator), and signing in with httpx.

Use the fixtures in a test module as ``ui_live = ui_support.ui_live`` and ``browser = ui_support.browser``
(module scope: one server and one chromium per module)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_finetune import private_home
from tests.fixtures_server import LiveServer, api_settings, create_keys

CHROMIUM = "/usr/bin/chromium"
UNSUPPORTED_PMID = 99999999  # not in the test corpus
SCRIPT = "<script>window.__pwned = 1</script>"


def fake_answer(prompt: str) -> str:
    pmids = [p for p in re.findall(r"\[PMID:(\d+)\]", prompt) if p not in ("12345678", "1", "2")]  # not the examples
    first = pmids[0] if pmids else "1"
    return (f"Yes, **mitochondria** are involved [PMID:{first}]. {SCRIPT} "
            f"An unrelated claim [PMID:{UNSUPPORTED_PMID}].")


class _FakeVllm(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json({"object": "list", "data": [{"id": "base"}]} if self.path.startswith("/v1/models") else {})

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        prompt = " ".join(str(m.get("content", "")) for m in req.get("messages", []))
        text = fake_answer(prompt)
        if not req.get("stream"):
            self._json({"choices": [{"message": {"content": text}, "finish_reason": "stop"}], "model": req.get("model"),
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in re.findall(r"\S+\s*", text):
            chunk = {"choices": [{"delta": {"content": word}, "finish_reason": None}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        last = {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")


@dataclass
class UiLive:
    url: str
    keys: dict[str, str]  # role (and "curator2") -> API key
    settings: Any
    app: Any

    @contextmanager
    def client(self, role: str | None = None) -> Iterator[httpx.Client]:
        """An httpx client signed in as ``role`` (None: not signed in), holding the session and CSRF cookies."""
        with httpx.Client(base_url=self.url, timeout=60, follow_redirects=False) as c:
            c.get("/ui/login")
            if role is not None:
                r = c.post("/ui/login", data={"key": self.keys[role], "next": "/ui/ask", "_csrf_token": csrf(c)})
                assert r.status_code == 303, r.text
            yield c
        return c


def csrf(c: httpx.Client) -> str:
    return c.cookies["pm_csrf"]


@pytest.fixture(scope="module")
def ui_live(server_home: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiLive]:
    from server.app import create_app

    vllm = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    threading.Thread(target=vllm.serve_forever, daemon=True).start()
    home = private_home(server_home, tmp_path_factory.mktemp("ui") / "home")
    settings = api_settings(home, tiny_model_dir, f"http://127.0.0.1:{vllm.server_port}")
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    from server.auth import KeyStore

    ks = KeyStore(settings.app_db)
    keys["curator2"] = ks.create(f"curator2-{uuid.uuid4().hex[:6]}", "curator")
    ks.close()
    try:
        with LiveServer(create_app(settings)) as srv:
            yield UiLive(url=srv.url, keys=keys, settings=settings, app=srv.server.config.app)
    finally:
        vllm.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Session:
    """A browser tab signed in as ``role`` (None: not signed in) that records console errors and uncaught
    exceptions."""

    def __init__(self, browser: Any, url: str, keys: dict[str, str], role: str | None, width: int = 1280,
                 height: int = 900) -> None:
        self.ctx = browser.new_context(base_url=url, viewport={"width": width, "height": height})
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        if role is not None:
            self.page.goto("/ui/login")
            self.page.fill("#key", keys[role])
            self.page.click("form button[type=submit]")
            self.page.wait_for_url("**/ui/ask")

    def goto(self, path: str) -> Any:
        return self.page.goto(path)

    def csrf(self) -> str:
        return next(c["value"] for c in self.ctx.cookies() if c["name"] == "pm_csrf")

    def close(self) -> None:
        self.ctx.close()
