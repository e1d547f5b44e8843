"""Index swaps never stall requests (issue 10 item 7): a newer generation saved by an ingest process is opened
with no lock held while requests go on with the current one; ``/health`` never triggers a reload."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_finetune import private_home
from tests.fixtures_server import LiveServer, api_settings, bearer, closed_url, create_keys, pubmedqa_articles

pytestmark = [pytest.mark.integration, pytest.mark.network]

QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
FAST_S = 10.0  # a request that waits for a load (held for LOAD_HOLD_S) takes longer than this
LOAD_HOLD_S = 60.0


@pytest.fixture()
def swap(server_home: Path, tiny_model_dir: Path, shared_data: Path, embedder: Any, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A live API over a private copy of the index; ``new_generation()`` saves one more generation (as an
    ingest would) and from then on opening the index blocks until ``release`` is set."""
    from retrieval.index import VectorIndex
    from retrieval.indexer import Indexer
    from server.app import create_app

    home = private_home(server_home, tmp_path / "home")
    settings = api_settings(home, tiny_model_dir, closed_url())
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    release, opened = threading.Event(), []
    original = VectorIndex.open.__func__  # type: ignore[attr-defined]

    def slow_open(cls: type, *args: Any, **kwargs: Any) -> Any:
        opened.append(time.monotonic())
        release.wait(LOAD_HOLD_S)  # a large index takes this long to read
        return original(cls, *args, **kwargs)

    def new_generation() -> None:
        extra = pubmedqa_articles(shared_data, n=60)[50:]
        with Indexer(settings, embedder) as ix:
            ix.apply(extra, progress=False)
        monkeypatch.setattr(VectorIndex, "open", classmethod(slow_open))

    with LiveServer(create_app(settings)) as srv:
        yield {"url": srv.url, "headers": bearer(keys["reader"]), "new_generation": new_generation,
               "release": release, "opened": opened}
        release.set()


def search(s: dict[str, Any]) -> httpx.Response:
    return httpx.post(s["url"] + "/v1/query", json={"question": QUESTION, "mode": "search", "k": 3},
                      headers=s["headers"], timeout=FAST_S)


def test_health_never_reloads_and_searches_do_not_wait_for_a_swap(swap: dict[str, Any]) -> None:
    before = search(swap).json()["index_version"]
    swap["new_generation"]()
    time.sleep(5.5)  # past the reload interval: the next look at the disk finds the new generation
    t0 = time.monotonic()
    health = httpx.get(swap["url"] + "/health", timeout=FAST_S)  # raises ReadTimeout if it waits for a load
    assert health.json()["status"] == "unavailable"  # vLLM is down; the index part answered at once
    assert swap["opened"] == []  # /health did not open the new generation
    for _ in range(3):  # the first of these starts the load; none waits for it
        t0 = time.monotonic()
        r = search(swap)
        assert r.status_code == 200, r.text
        assert r.json()["index_version"] == before
        assert time.monotonic() - t0 < FAST_S
    assert len(swap["opened"]) == 1  # one load in flight
    swap["release"].set()
    deadline = time.monotonic() + 30
    while search(swap).json()["index_version"] == before:
        assert time.monotonic() < deadline, "the new generation was never swapped in"
        time.sleep(0.2)
