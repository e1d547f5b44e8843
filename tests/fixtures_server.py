"""Fixtures for server tests: test-preset settings for an API, a small real corpus (50 PubMedQA abstracts
indexed with the real embedder through the Indexer), API keys for each role, and a live uvicorn server in a
thread (for the openai client, streaming and the benchmark)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pubmind.records import Article
from pubmind.settings import Settings
from tests.conftest import settings_at

N_CORPUS = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_url() -> str:
    """A URL where nothing listens (for 'vLLM is down')."""
    return f"http://127.0.0.1:{free_port()}"


def pubmedqa_articles(shared_data: Path, n: int = N_CORPUS) -> list[Article]:
    """The first ``n`` PubMedQA (PQA-L) abstracts as Articles (``retrieval.pubmedqa``'s conversion)."""
    from retrieval.pubmedqa import load_pubmedqa, to_article

    data = load_pubmedqa(shared_data / "pubmedqa/data/ori_pqal.json")
    return [to_article(pmid, rec) for pmid, rec in list(data.items())[:n]]


@pytest.fixture(scope="session")
def server_corpus(shared_data: Path) -> list[Article]:
    return pubmedqa_articles(shared_data)


@pytest.fixture(scope="session")
def server_home(tmp_path_factory: pytest.TempPathFactory, server_corpus: list[Article], embedder: Any) -> Path:
    """A PUBMIND_HOME holding the 50-article corpus store and its vector index (real MiniLM)."""
    from retrieval.indexer import Indexer

    home = tmp_path_factory.mktemp("server-home")
    with Indexer(settings_at(home), embedder) as ix:
        ix.apply(server_corpus, progress=False)
    return home


def api_settings(home: Path, model_dir: Path, vllm_url: str, **server: Any) -> Settings:
    return settings_at(home, llm={"model": str(model_dir), "vllm_url": vllm_url}, server=server)


def create_keys(settings: Settings, tag: str = "") -> dict[str, str]:
    """One key per role, named '<role><tag>'; returns {role: key}."""
    from server.auth import KeyStore

    ks = KeyStore(settings.app_db)
    try:
        return {r: ks.create(f"{r}{tag}", r) for r in ("reader", "curator", "admin")}
    finally:
        ks.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 120 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class FakeVllm:
    """A stand-in for vLLM's OpenAI server on 127.0.0.1 that records every chat request body (``requests``) and
    answers with ``reply`` (``{cite}`` is replaced by the first ``[PMID:n]`` of the evidence in the prompt, so
    the answer cites real evidence), whole or streamed in ``chunk_chars``-character deltas."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, Any]] = []
        self.reply = "Mitochondria take part {cite} (see also PMID 99999999)."
        self.finish_reason = "stop"
        self.chunk_chars = 3
        self.delay_s = 0.0  # between streamed chunks
        self.drop_after: int | None = None  # close the connection after this many chunks (vLLM killed)
        self.aborted = 0  # streams the client closed before the end (vLLM would abort those requests)
        fake = self

        class Handler(BaseHTTPRequestHandler):
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
                if self.path == "/health":
                    self._json({})
                else:
                    self._json({"object": "list", "data": [{"id": "base", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                text = fake.text_for(body)
                usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                if not body.get("stream"):
                    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": fake.finish_reason}
                    if body.get("logprobs"):
                        choice["logprobs"] = {"content": [{"token": "M", "logprob": -0.1, "top_logprobs": []}]}
                    self._json({"id": "x", "object": "chat.completion", "model": body["model"],
                                "choices": [choice], "usage": usage})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                pieces = [text[i:i + fake.chunk_chars] for i in range(0, len(text), fake.chunk_chars)]
                chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
                chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": fake.finish_reason}]},
                           {"choices": [], "usage": usage}]
                try:
                    for i, c in enumerate(chunks):
                        if fake.drop_after is not None and i == fake.drop_after:
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)  # dies mid-stream, no [DONE]
                            return
                        self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
                        self.wfile.flush()
                        time.sleep(fake.delay_s)
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    fake.aborted += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def text_for(self, body: dict[str, Any]) -> str:
        found = re.search(r"\[PMID:\d+\]", str(body["messages"][-1].get("content", "")))  # the evidence
        return self.reply.replace("{cite}", found.group() if found else "")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake_vllm() -> Iterator[FakeVllm]:
    fake = FakeVllm()
    yield fake
    fake.close()
