"""``pubmind serve`` as a real subprocess: it launches vLLM, reports ready only when vLLM and the index are up,
restarts a vLLM that dies, and leaves no process behind on Ctrl-C (SIGINT)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.fixtures_server import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.network]

PUBMIND = Path(sys.executable).parent / "pubmind"


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float, admin: str,
                want_restarts: int = 0) -> dict:
    """The admin view of /health once ready with ``want_restarts`` restarts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pubmind serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(url + "/health", timeout=5, headers={"Authorization": f"Bearer {admin}"})
            body = r.json()
            if r.status_code == 200 and body["vllm"]["restarts_total"] == want_restarts:
                return body
        time.sleep(1)
    pytest.fail(f"not ready within {timeout}s:\n{log.read_text()[-3000:]}")


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return not any(_cmdline(p) for p in psutil.process_iter() if _pgid(p.pid) == pgid)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_serve_supervises_vllm_and_sigint_leaves_nothing(server_home: Path, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(server_home, home, ignore=shutil.ignore_patterns("app.sqlite*", "*.lock", "logs"))
    api_port, vllm_port = free_port(), free_port()
    env = {**os.environ, "PUBMIND_HOME": str(home), "PUBMIND_PRESET": "test",
           "PUBMIND_LLM__MODEL": str(tiny_model_dir), "PUBMIND_LLM__VLLM_URL": "",
           "PUBMIND_LLM__VLLM_PORT": str(vllm_port), "PUBMIND_LLM__MAX_LORAS": "2",
           "PUBMIND_LLM__MAX_RESTARTS": "1", "PUBMIND_LLM__VLLM_ARGS": '["--dtype", "float32"]',
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("PUBMIND_CONFIG", None)
    from server.auth import KeyStore

    keys = KeyStore(home / "app.sqlite")
    admin = keys.create("admin", "admin")
    keys.close()
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{api_port}"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([str(PUBMIND), "serve", "--port", str(api_port)], env=env, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    pids: list[int] = []
    try:
        body = _wait_ready(url, proc, log, timeout=420, admin=admin)
        assert set(httpx.get(url + "/health").json()) == {"status", "reason"}  # no internals without a key
        assert body["vllm"]["state"] == "ready"
        assert body["index"]["count"] > 0
        pid = int((home / "logs" / "vllm.pid").read_text())
        pids.append(pid)
        assert body["vllm"]["pid"] == pid
        assert _pgid(pid) == pid != _pgid(proc.pid)  # its own process group
        assert f"--port {vllm_port}" in " ".join(psutil.Process(pid).cmdline())
        assert httpx.get(f"http://127.0.0.1:{vllm_port}/health").status_code == 200

        # vLLM dies -> the supervisor restarts it (max_restarts=1) and /health is ready again
        os.killpg(pid, signal.SIGKILL)
        body = _wait_ready(url, proc, log, timeout=420, admin=admin, want_restarts=1)
        new_pid = body["vllm"]["pid"]
        pids.append(new_pid)
        assert new_pid != pid
        assert _group_gone(pid)
        assert "pubmind_vllm_restarts_total 1.0" in httpx.get(url + "/metrics").text

        # Ctrl-C: the API stops and takes vLLM (its whole process group) with it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        assert _group_gone(new_pid), "vLLM survived pubmind serve"
        assert not (home / "logs" / "vllm.pid").exists()
        assert not any(f"--port {vllm_port}" in _cmdline(p) for p in psutil.process_iter())
        assert "vLLM stopped" in log.read_text()
    finally:  # never leave processes behind, even when an assertion failed
        for pg in [proc.pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pg, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _cmdline(p: psutil.Process) -> str:
    """The command line of a live process ('' for zombies and processes that vanished)."""
    try:
        return "" if p.status() == psutil.STATUS_ZOMBIE else " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""
