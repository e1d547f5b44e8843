"""Streams that end early, against a real index and a fake vLLM: a client that disconnects mid-answer (the
answer is recorded as cut off and vLLM's stream is closed, so vLLM aborts the request), and vLLM dying
mid-stream (the client gets an error event, the partial answer is recorded, the next request works)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from finetune.store import AnswerStore
from pubmind.settings import Settings
from tests.fixtures_server import FakeVllm, LiveServer, api_settings, bearer, create_keys

pytestmark = [pytest.mark.integration, pytest.mark.network]

QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"


@pytest.fixture()
def live(server_home: Path, tiny_model_dir: Path) -> Iterator[tuple[str, dict[str, str], FakeVllm, Settings]]:
    from server.app import create_app

    fake = FakeVllm()
    fake.reply = "Mitochondria take part {cite} in the remodelling. " * 8
    settings = api_settings(server_home, tiny_model_dir, fake.url)
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    with LiveServer(create_app(settings)) as srv:
        yield srv.url, bearer(keys["reader"]), fake, settings
    fake.close()


def answers_with(settings: Settings, reason: str, timeout_s: float = 30.0) -> list[Any]:
    """Stored answers whose finish reason is ``reason`` (waits up to ``timeout_s``: recording follows the cut)."""
    store = AnswerStore(settings.app_db)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = store._query("SELECT id FROM answers WHERE finish_reason = ?", (reason,))
            if rows or time.monotonic() > deadline:
                return [store.get(r["id"]) for r in rows]
            time.sleep(0.1)
    finally:
        store.close()


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/query", {"question": QUESTION, "k": 3, "stream": True}),
    ("/v1/chat/completions", {"model": "base", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}),
])
def test_a_client_that_disconnects_mid_stream_is_recorded_as_cut_off(live: Any, path: str,
                                                                      body: dict[str, Any]) -> None:
    url, headers, fake, settings = live
    fake.delay_s = 0.05  # ~130 chunks: several seconds of answer
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c, c.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few events, then the client goes away
    assert any(line for line in got)
    cut = answers_with(settings, "client_disconnected")
    assert len(cut) == 1
    assert 0 < len(cut[0].answer) < len(fake.reply)  # what was generated before the cut
    deadline = time.monotonic() + 10
    while fake.aborted == 0 and time.monotonic() < deadline:  # vLLM saw its stream closed
        time.sleep(0.05)
    assert fake.aborted == 1


def test_vllm_dying_mid_stream_gives_an_error_event_and_the_server_recovers(live: Any) -> None:
    url, headers, fake, settings = live
    fake.drop_after = 4
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        r = c.post("/v1/query", json={"question": QUESTION, "k": 3, "stream": True})
        assert r.status_code == 200
        events = [block.split("\n", 1)[0] for block in r.text.strip().split("\n\n")]
        assert events[0] == "event: evidence"
        assert events[-1] == "event: error"
        error = json.loads(r.text.strip().split("\n\n")[-1].split("data: ", 1)[1])
        assert "ended the stream before the answer was complete" in error["error"]["message"]
        assert len(answers_with(settings, "error")) == 1
        fake.drop_after = None
        again = c.post("/v1/query", json={"question": QUESTION, "k": 3})
        assert again.status_code == 200
        assert again.json()["answer"]
