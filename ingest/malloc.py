"""The parse workers' memory allocator (``ingest.worker_malloc``).

A parse worker spends about a tenth of its CPU in glibc's ``malloc``/``free``: libxml2 allocates every node,
attribute and text of a record and frees them when the record is cleared, and Python's larger strings come
from ``malloc`` too. jemalloc does the same work with ~13% less worker CPU (measured on generated PubMed
baseline files: 209 against 240 worker CPU-seconds for 300k records; the writer's SQLite and FAISS work
gains nothing, so only the workers get it).

An allocator can only be chosen before a process starts (``LD_PRELOAD``), and the workers are started by
``multiprocessing``'s spawn method, which runs ``multiprocessing.spawn.get_executable()``. While a parse pool
is open, that executable is a two-line launcher that execs the same Python with the library preloaded.
It is process-wide, and pubmind starts no other processes through ``multiprocessing``; a Python started
through it is the same interpreter, so anything else is unaffected. The launcher is checked once before
it is used: it must start and have the library mapped, or the setting's value is refused (an explicit
library) or the workers use the C library's malloc and the log says why (``auto``).

Ray parse tasks (``ingest.executor = "ray"``) run in Ray's worker processes: the task's runtime environment
sets ``LD_PRELOAD`` (Ray starts workers for it), so the library must be installed on every node (an explicit
path at the same place). Each task reports what it ran with; an explicit library that a task did not get
is refused, ``auto`` is reported as it came out (e.g. ``system malloc`` from a node without jemalloc).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import spawn
from pathlib import Path

from pubmind.errors import ConfigError

log = logging.getLogger("pubmind.ingest")
SYSTEM = "system malloc"


class _State:
    """The launcher in use (shared by the parse pools open at once), under ``_lock``."""

    users = 0
    launcher: Path | None = None
    before = ""  # spawn's executable before the launcher
    name = SYSTEM


_lock = threading.Lock()
_state = _State()


def resolve(setting: str) -> str | None:
    """The library to preload for ``ingest.worker_malloc`` (a path or soname), None for the C library's."""
    if setting == "system":
        return None
    if setting == "auto":
        return ctypes.util.find_library("jemalloc") if sys.platform.startswith("linux") else None
    if not sys.platform.startswith("linux"):
        raise ConfigError(f"ingest.worker_malloc={setting!r}: preloading an allocator needs Linux (LD_PRELOAD); "
                          "use 'auto' or 'system'", param="ingest.worker_malloc")
    if "/" in setting and not Path(setting).is_file():
        raise ConfigError(f"ingest.worker_malloc={setting!r}: no such file", param="ingest.worker_malloc")
    return setting


def in_use(lib: str | None) -> str:
    """``lib`` if this process has it mapped (it was preloaded), else ``SYSTEM``: what a Ray parse task,
    started with ``LD_PRELOAD`` from its runtime environment, reports back."""
    if lib is None:
        return SYSTEM
    try:
        with open("/proc/self/maps") as f:
            return lib if Path(lib).name in f.read() else SYSTEM
    except OSError:
        return SYSTEM


def _launcher(lib: str, folder: Path) -> Path:
    """Write a launcher that execs the current spawn executable with ``lib`` preloaded; check that it works
    (raises RuntimeError with the reason if it does not)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="python-", suffix=".sh", dir=folder)
    path = Path(name)
    with os.fdopen(fd, "w") as f:
        f.write(f'#!/bin/sh\nLD_PRELOAD={shlex.quote(lib)}${{LD_PRELOAD:+:$LD_PRELOAD}} '
                f'exec {shlex.quote(os.fsdecode(spawn.get_executable()))} "$@"\n')
    path.chmod(0o700)
    probe = f"import sys; sys.exit(0 if {Path(lib).name!r} in open('/proc/self/maps').read() else 3)"
    try:
        r = subprocess.run([str(path), "-c", probe], capture_output=True, text=True, timeout=60, check=False)
        why = "" if r.returncode == 0 else (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:  # e.g. a noexec file system, or a hung start
        why = str(e)
    if why:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"a Python with {lib} preloaded does not start with it loaded: {why}")
    return path


@contextmanager
def workers_malloc(setting: str, folder: Path) -> Iterator[str]:
    """While inside, processes started by ``multiprocessing``'s spawn method use the allocator of ``setting``
    (the launcher is written in ``folder``); yields the allocator's name for the log. Pools may nest or
    overlap: the first one in sets the launcher up (later ones share it), the last one out restores spawn's
    executable."""
    lib = resolve(setting)
    with _lock:
        if _state.users == 0 and lib is not None:
            try:
                _state.launcher = _launcher(lib, folder)
            except RuntimeError as e:
                if setting != "auto":
                    raise ConfigError(f"ingest.worker_malloc={setting!r}: {e}", param="ingest.worker_malloc") from None
                log.warning("ingest: parse workers use the C library's malloc: %s", e)
            else:
                _state.before, _state.name = spawn.get_executable(), lib
                spawn.set_executable(str(_state.launcher))
        _state.users += 1
        name = _state.name
    try:
        yield name
    finally:
        with _lock:
            _state.users -= 1
            if _state.users == 0 and _state.launcher is not None:
                spawn.set_executable(_state.before)
                _state.launcher.unlink(missing_ok=True)
                _state.launcher, _state.before, _state.name = None, "", SYSTEM
