"""vLLM supervision: the command line, startup failure with the log tail, the startup timeout, stop() leaving
no process behind, and the vLLM HTTP client against the real server."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pubmind.errors import ConfigError, InvalidInput, NotFound, ServiceUnavailable, UpstreamError
from tests.conftest import settings_at
from tests.fixtures_server import free_port


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); treat it as gone when its state is Z
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_command_line(tmp_path: Path) -> None:
    from generation.supervisor import VllmSupervisor

    s = settings_at(tmp_path, llm={"model": "/models/m", "vllm_port": 8123, "max_loras": 3, "max_lora_rank": 16,
                                     "max_model_len": 2048, "vllm_args": ["--dtype", "float32"]})
    sup = VllmSupervisor(s, adapters=lambda: {"onco@v2": "/a/onco/v2", "cardio@v1": "/a/cardio/v1"})
    cmd = sup.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[0].endswith("python")
    joined = " ".join(cmd)
    for part in ("--model /models/m", "--served-model-name base", "--port 8123", "--enable-lora",
                 "--max-lora-rank 16", "--max-loras 3", "--max-cpu-loras 8", "--max-model-len 2048",
                 "--dtype float32"):
        assert part in joined, part
    # adapters are loaded at run time (a broken one must not keep vLLM from starting); the key is not in argv
    assert "--lora-modules" not in joined
    assert "--api-key" not in joined
    assert sup.url == "http://127.0.0.1:8123"
    with pytest.raises(ConfigError, match=re.escape("llm.vllm_python='/nope/python'")):
        VllmSupervisor(settings_at(tmp_path, llm={"vllm_python": "/nope/python"}))


@pytest.mark.vllm
def test_startup_failure_reports_log_tail(tmp_path: Path, tiny_model_dir: Path) -> None:
    from generation.supervisor import VllmSupervisor

    s = settings_at(tmp_path, llm={"model": str(tiny_model_dir), "vllm_port": free_port(),
                                     "vllm_args": ["--no-such-flag"]})
    sup = VllmSupervisor(s)
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"vLLM exited with code \d+ during startup") as e:
        sup.start()
    assert "no-such-flag" in e.value.message  # vLLM's own complaint, from the log tail
    assert time.monotonic() - t0 < 240
    assert sup.state().state == "failed"
    assert _gone(sup.proc.pid)
    assert (tmp_path / "logs" / "vllm.log").read_text().count("starting:") == 1


@pytest.mark.vllm
def test_startup_timeout_kills_the_group(tmp_path: Path, tiny_model_dir: Path) -> None:
    from generation.supervisor import VllmSupervisor

    s = settings_at(tmp_path, llm={"model": str(tiny_model_dir), "vllm_port": free_port(),
                                     "startup_timeout_seconds": 3, "vllm_args": ["--dtype", "float32"]})
    sup = VllmSupervisor(s)
    with pytest.raises(ServiceUnavailable, match=r"not healthy within llm.startup_timeout_seconds=3"):
        sup.start()
    pid = sup.proc.pid
    assert _gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing left in its process group
    sup.stop()  # idempotent


@pytest.mark.vllm
def test_refuses_port_in_use(tmp_path: Path, tiny_model_dir: Path, vllm_server: str) -> None:
    from generation.supervisor import VllmSupervisor

    port = int(vllm_server.rsplit(":", 1)[1])
    sup = VllmSupervisor(settings_at(tmp_path, llm={"model": str(tiny_model_dir), "vllm_port": port}))
    with pytest.raises(ServiceUnavailable, match="something already answers"):
        sup.start()
    assert sup.proc is None


@pytest.mark.vllm
def test_vllm_client_against_real_server(vllm_server: str, tmp_path: Path) -> None:
    import asyncio

    from generation.vllm_client import VllmClient

    key = os.environ["PUBMIND_LLM__VLLM_API_KEY"]  # the fixture's per-launch key

    async def run() -> None:
        async with VllmClient(vllm_server, timeout_seconds=60) as anonymous:
            await anonymous.health()  # /health needs no key
            with pytest.raises(UpstreamError, match=r"\(401\)"):
                await anonymous.models()
            with pytest.raises(UpstreamError, match=r"\(401\)"):
                await anonymous.load_lora_adapter("x@v1", str(tmp_path))
        async with VllmClient(vllm_server, timeout_seconds=60, api_key=key) as c:
            assert (await c.models())[0] == "base"  # (+ any adapters other tests loaded into the shared server)
            r = await c.chat([{"role": "user", "content": "hello"}], "base", max_tokens=6)
            assert (r.completion_tokens, r.finish_reason) == (6, "length")
            assert r.prompt_tokens > 0
            deltas = [d async for d in c.chat_stream([{"role": "user", "content": "hello"}], "base", max_tokens=6)]
            assert "".join(d.text for d in deltas) == r.text  # greedy: the same text
            assert deltas[-1].completion_tokens == 6
            with pytest.raises(NotFound, match="does not exist"):
                await c.chat([{"role": "user", "content": "x"}], "nope", max_tokens=2)
            with pytest.raises(InvalidInput, match="vLLM chat completion failed \\(400\\)"):
                await c.chat([{"role": "user", "content": "x " * 3000}], "base", max_tokens=2)  # > max_model_len
            with pytest.raises((NotFound, InvalidInput), match="vLLM loading LoRA adapter 'x@v1'"):
                await c.load_lora_adapter("x@v1", str(tmp_path / "missing"))

    asyncio.run(run())


# ---- supervision against a fake vLLM (no vLLM needed) ---------------------------------------------------
FAKE_VLLM = r'''
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
# "exit:S" exits S seconds after its first /health answer, "hang:S" stops answering S seconds after it
mode = os.environ.get("FAKE_MODE", "")
if "--lora-modules" in args:  # like vLLM: a module it cannot load on its command line stops the whole server
    for module in args[args.index("--lora-modules") + 1:]:
        if module.startswith("--"):
            break
        if not os.path.isdir(module.split("=", 1)[1]):
            sys.exit(f"cannot load LoRA module {module}")
key, loaded, born = os.environ.get("VLLM_API_KEY"), ["base"], []  # born: time of the first /health answer


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def guard(self):
        if mode.startswith("hang:") and born and time.monotonic() - born[0] > float(mode[5:]):
            time.sleep(3600)
        if self.path.startswith("/v1") and key and self.headers.get("Authorization") != f"Bearer {key}":
            self.reply(401, {"error": {"message": "Unauthorized"}})
            return False
        return True

    def do_GET(self):
        if not self.guard():
            return
        if self.path == "/health":
            self.reply(200, {})
            if not born:
                born.append(time.monotonic())
                if mode.startswith("exit:"):
                    threading.Timer(float(mode[5:]), lambda: os._exit(3)).start()
        else:
            self.reply(200, {"data": [{"id": m} for m in loaded]})

    def do_POST(self):
        if not self.guard():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not os.path.isdir(body["lora_path"]):
            self.reply(400, {"error": {"message": f"no adapter at {body['lora_path']}"}})
            return
        loaded.append(body["lora_name"])
        self.reply(200, {})


ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.fixture()
def fake_supervisor(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """``make(mode="", adapters=None, **llm)``: a VllmSupervisor whose command runs the fake vLLM above."""
    import generation.supervisor as supervisor_mod
    from generation.supervisor import VllmSupervisor

    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    monkeypatch.setattr(supervisor_mod, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(supervisor_mod, "HEALTH_TIMEOUT_SECONDS", 0.3)
    made: list[VllmSupervisor] = []

    def make(mode: str = "", adapters: dict[str, str] | None = None, **llm: Any) -> VllmSupervisor:
        monkeypatch.setenv("FAKE_MODE", mode)
        settings = settings_at(tmp_path / f"home{len(made)}", llm={"model": str(tiny_model_dir), "vllm_port": free_port(),
                                                "restart_backoff_seconds": 0.05, **llm})
        sup = VllmSupervisor(settings, adapters=lambda: dict(adapters or {}))
        real = sup.command
        sup.command = lambda: [sys.executable, str(script), *real()[3:]]  # type: ignore[method-assign]
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop()


def _launches(sup: Any) -> int:
    return sup.log_path.read_text().count("starting:")


def _wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_an_adapter_that_fails_to_load_is_skipped_not_fatal(fake_supervisor: Callable[..., Any],
                                                           tmp_path: Path) -> None:
    """Issue 10 item 3: a broken adapter in the registry must not keep the base model down."""
    good = tmp_path / "good"
    good.mkdir()
    sup = fake_supervisor(adapters={"good@v1": str(good), "bad@v2": str(tmp_path / "gone")})
    sup.start()
    st = sup.state()
    assert st.state == "ready"
    assert list(st.adapters_skipped) == ["bad@v2"]
    assert "no adapter at" in st.adapters_skipped["bad@v2"]
    models = httpx.get(f"{sup.url}/v1/models", headers={"Authorization": f"Bearer {sup.key_path.read_text()}"})
    assert models.json()["data"] == [{"id": "base"}, {"id": "good@v1"}]


def test_vllm_gets_a_fresh_key_per_launch(fake_supervisor: Callable[..., Any]) -> None:
    """Issue 10 item 5: runtime LoRA loading is not open to any local process."""
    import asyncio

    from generation.vllm_client import KeyFile, VllmClient

    sup = fake_supervisor(mode="exit:0.5", max_restarts=5)
    sup.start()
    first = sup.key_path.read_text()
    assert oct(sup.key_path.stat().st_mode & 0o777) == "0o600"
    assert httpx.get(f"{sup.url}/v1/models").status_code == 401  # no key
    _wait_for(lambda: sup.state().restarts_total >= 1 and sup.state().state == "ready")
    assert sup.key_path.read_text() != first  # the restarted vLLM has a new key

    async def models(key: object) -> list[str]:
        async with VllmClient(sup.url, timeout_seconds=5, api_key=key) as c:  # type: ignore[arg-type]
            return await c.models()

    assert asyncio.run(models(KeyFile(sup.key_path))) == ["base"]  # the key file follows the restart


def test_restarts_are_counted_in_a_window(fake_supervisor: Callable[..., Any]) -> None:
    """Issue 10 item 4: crashes spread over time never exhaust max_restarts; a crash loop still gives up."""
    sup = fake_supervisor(mode="exit:0.6", max_restarts=1, restart_window_seconds=0.5)
    sup.start()
    _wait_for(lambda: sup.state().restarts_total >= 3)
    assert sup.state().state != "failed"  # 3 restarts over the server's life with max_restarts=1
    loop = fake_supervisor(mode="exit:0.2", max_restarts=2, restart_window_seconds=60)
    loop.start()
    _wait_for(lambda: loop.state().state == "failed")
    st = loop.state()
    assert st.restarts_in_window == 2
    assert "giving up" in st.reason
    assert _launches(loop) == 3


def test_restart_backoff_doubles(fake_supervisor: Callable[..., Any]) -> None:
    sup = fake_supervisor(mode="exit:0.1", max_restarts=3, restart_window_seconds=60, restart_backoff_seconds=0.4)
    t0 = time.monotonic()
    sup.start()
    _wait_for(lambda: sup.state().state == "failed", timeout=30)
    assert time.monotonic() - t0 >= 0.4 + 0.8 + 1.6  # backoffs before restarts 1, 2, 3


def test_a_hung_vllm_is_restarted(fake_supervisor: Callable[..., Any]) -> None:
    """Issue 10 item 4: a vLLM that stops answering /health (but does not exit) is killed and restarted."""
    sup = fake_supervisor(mode="hang:1.0", health_interval_seconds=0.2, health_failures=2, max_restarts=5)
    sup.start()
    pid = sup.pid
    _wait_for(lambda: sup.state().restarts_total >= 1)
    assert "health checks in a row (hung)" in sup.state().reason
    assert _gone(pid)


def test_state_answers_while_a_restart_holds_the_lock(fake_supervisor: Callable[..., Any]) -> None:
    """/health reads state(): it must not wait minutes for a restarting vLLM to come up."""
    import threading

    sup = fake_supervisor()
    holding, release = threading.Event(), threading.Event()

    def restart_in_progress() -> None:
        with sup._lock:
            holding.set()
            release.wait(10)

    threading.Thread(target=restart_in_progress, daemon=True).start()
    holding.wait(5)
    t0 = time.monotonic()
    st = sup.state()
    elapsed = time.monotonic() - t0
    release.set()
    assert st.state == "stopped"
    assert elapsed < 1.0
