"""Adapter registry: versioned LoRA adapters on disk, the source of truth for what is served.

Layout under ``settings.adapters_dir``::

    NAME/v1/            adapter_config.json, adapter_model.safetensors, manifest.json
    NAME/v2/ ...
    NAME/state.json     {"current": 2, "stack": [1, 2], "history": [{"action", "version", "at", "by"}, ...]}
    NAME/.lock          flock held while a version is created or the alias changes

A version folder appears atomically (copied into ``NAME/.tmp-*`` then renamed to ``NAME/vN``); the alias
(``NAME`` -> current version) and the promotion history are rewritten atomically (temp file + os.replace),
so a crash at any point leaves the previous state usable. vLLM serves version N of NAME under the LoRA name
``NAME@vN`` (never a same-name reload, which vLLM would not pick up for requests in flight).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import msgspec

from pubmind.durable import fsync_dir, write_json_atomic
from pubmind.errors import Conflict, InvalidInput, NotFound

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch ($ would accept a trailing "\n")
_MODEL_RE = re.compile(r"(?P<name>[^@]+)(?:@v(?P<version>\d+))?")
_VERSION_DIR = re.compile(r"v(\d+)")
RESERVED_NAMES = frozenset({"base"})
MANIFEST = "manifest.json"
STATE = "state.json"


# one promotion or rollback: {"action", "version", "from", "at", "by", "reason"} ("from" is a keyword)
HistoryEntry = TypedDict("HistoryEntry", {"action": str, "version": int, "from": int | None, "at": float, "by": str,
                                          "reason": str})


class RegistryState(TypedDict):
    """``NAME/state.json``."""

    current: int | None
    stack: list[int]  # promoted versions, the current one last (rollback pops it)
    history: list[HistoryEntry]


class AdapterVersion(msgspec.Struct, kw_only=True):
    name: str
    version: int
    path: str
    manifest: dict[str, Any]  # base_model, dataset_hash, hyperparameters, metrics, evaluation, parent_version, ...
    current: bool = False

    @property
    def lora_name(self) -> str:
        """The name vLLM serves this version under: ``NAME@vN``."""
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "lora_name": self.lora_name, "path": self.path,
                "current": self.current, "manifest": self.manifest}


def check_name(name: str, param: str = "adapter") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
        raise InvalidInput(
            f"{param} must be 1-64 characters of letters, digits, '_', '.', '-' (starting with a letter or "
            f"digit) and not one of {sorted(RESERVED_NAMES)}; got {name!r}", param=param)
    return name


def parse_model(model: str) -> tuple[str, int | None]:
    """``"name"`` -> (name, None); ``"name@vN"`` -> (name, N). InvalidInput for anything else."""
    m = _MODEL_RE.fullmatch(model or "")
    if not m:
        raise InvalidInput(f"model must be 'NAME' or 'NAME@vN', got {model!r}", param="model")
    name = check_name(m["name"], "model")
    version = int(m["version"]) if m["version"] is not None else None
    if version is not None and version < 1:
        raise InvalidInput(f"model version must be >= 1, got {model!r}", param="model")
    return name, version




class AdapterRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- reading --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Adapters with at least one version, sorted."""
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and NAME_RE.fullmatch(p.name) and self._version_numbers(p.name))

    def _version_numbers(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(m[1]) for p in d.iterdir() if p.is_dir() and (m := _VERSION_DIR.fullmatch(p.name)))

    def _state(self, name: str) -> RegistryState:
        p = self.root / name / STATE
        if not p.exists():
            return {"current": None, "stack": [], "history": []}
        state: RegistryState = json.loads(p.read_text())
        return state

    def _load(self, name: str, version: int, current: int | None) -> AdapterVersion:
        path = self.root / name / f"v{version}"
        manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).exists() else {}
        return AdapterVersion(name=name, version=version, path=str(path), manifest=manifest,
                              current=version == current)

    def versions(self, name: str) -> list[AdapterVersion]:
        """Every version of ``name``, oldest first; NotFound if the adapter does not exist."""
        check_name(name)
        numbers = self._version_numbers(name)
        if not numbers:
            raise NotFound(f"adapter {name!r} not found (known: {self.names()})", param="adapter")
        current = self._state(name)["current"]
        return [self._load(name, v, current) for v in numbers]

    def get(self, name: str, version: int) -> AdapterVersion:
        check_name(name)
        if version not in self._version_numbers(name):
            if not self._version_numbers(name):
                raise NotFound(f"adapter {name!r} not found (known: {self.names()})", param="adapter")
            raise NotFound(f"adapter {name!r} has no version {version} (versions: "
                           f"{self._version_numbers(name)})", param="version")
        return self._load(name, version, self._state(name)["current"])

    def current(self, name: str) -> AdapterVersion | None:
        """The promoted version of ``name`` (None if none is promoted yet); NotFound for unknown names."""
        check_name(name)
        if not self._version_numbers(name):
            raise NotFound(f"adapter {name!r} not found (known: {self.names()})", param="adapter")
        cur = self._state(name)["current"]
        return None if cur is None else self._load(name, cur, cur)

    def resolve(self, model: str, *, any_version: bool = False) -> AdapterVersion:
        """``"name"`` -> its current version, ``"name@vN"`` -> that version. Only the current and previously
        promoted versions unless ``any_version`` (never for readers: a gate-rejected version stays unserved).
        NotFound for unknown names or versions (and for a name with no promoted version); InvalidInput for
        malformed strings."""
        name, version = parse_model(model)
        if version is not None:
            v = self.get(name, version)
            if not any_version and version not in self.promoted_versions(name):
                raise NotFound(f"model {model!r} is not available: only current and previously promoted versions "
                               f"of {name!r} are served ({sorted(self.promoted_versions(name))})", param="model")
            return v
        cur = self.current(name)
        if cur is None:
            raise NotFound(f"adapter {name!r} has no promoted version yet; ask for one as '{name}@vN'",
                           param="model")
        return cur

    def promoted_versions(self, name: str) -> set[int]:
        """Versions of ``name`` that are or were current (promoted by the gate or by hand)."""
        state = self._state(name)
        return {h["version"] for h in state["history"] if h.get("action") == "promote"} | set(state["stack"])

    def rollback_target(self, name: str) -> AdapterVersion:
        """The version ``rollback`` would make current; Conflict when there is none."""
        check_name(name)
        stack = self._state(name)["stack"]
        if len(stack) < 2:
            raise Conflict(f"adapter {name!r} has no earlier promoted version to roll back to "
                           f"(current: {stack[-1] if stack else None})", param="adapter")
        return self.get(name, stack[-2])

    def history(self, name: str) -> list[HistoryEntry]:
        check_name(name)
        return list(self._state(name)["history"])

    def recent(self, name: str, n: int) -> list[int]:
        """The current version and the versions current before it (most recent first), at most ``n``:
        what stays loaded in vLLM (``settings.finetune.keep_loaded``)."""
        out: list[int] = []
        for v in reversed(self._state(name)["stack"]):
            if v not in out:
                out.append(v)
        return out[:n]

    def serving_modules(self) -> dict[str, str]:
        """``{lora_name: path}`` of every adapter's current version (for vLLM's ``--lora-modules``)."""
        out = {}
        for name in self.names():
            cur = self.current(name)
            if cur is not None:
                out[cur.lora_name] = cur.path
        return out

    # ---- writing --------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield d
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def create_version(self, name: str, src_dir: str | Path, manifest: dict[str, Any]) -> AdapterVersion:
        """Copy the PEFT adapter in ``src_dir`` (``save_pretrained`` output) in as the next version of
        ``name`` (not promoted). ``manifest`` is stored with ``created_at``/``version`` added."""
        check_name(name)
        src = Path(src_dir)
        if not (src / "adapter_config.json").is_file():
            raise InvalidInput(f"src_dir {str(src)!r} is not a PEFT adapter folder (no adapter_config.json)",
                               param="src_dir")
        with self._locked(name) as d:
            numbers = self._version_numbers(name)
            version = (numbers[-1] if numbers else 0) + 1
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d))
            try:
                for f in src.iterdir():
                    if f.is_file() and f.name != MANIFEST:
                        shutil.copy2(f, tmp / f.name)
                full = {**manifest, "name": name, "version": version, "lora_name": f"{name}@v{version}",
                        "created_at": manifest.get("created_at", time.time())}
                (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
                for f in tmp.iterdir():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                os.rename(tmp, d / f"v{version}")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(d)
        return self._load(name, version, self._state(name)["current"])

    def update_manifest(self, name: str, version: int, **fields: Any) -> AdapterVersion:
        """Merge ``fields`` into a version's manifest (atomic rewrite), e.g. its evaluation report."""
        v = self.get(name, version)
        with self._locked(name):
            write_json_atomic(Path(v.path) / MANIFEST, {**v.manifest, **fields})
        return self.get(name, version)

    def promote(self, name: str, version: int, *, by: str = "", reason: str = "") -> AdapterVersion:
        """Make ``version`` the current one (the alias ``name`` serves it). Promoting the current version
        again is a no-op."""
        self.get(name, version)  # NotFound for unknown name/version
        with self._locked(name):
            state = self._state(name)
            if state["current"] != version:
                state["history"].append({"action": "promote", "version": version, "from": state["current"],
                                         "at": time.time(), "by": by, "reason": reason})
                state["stack"] = [*(v for v in state["stack"] if v != version), version]
                state["current"] = version
                write_json_atomic(self.root / name / STATE, state)
        return self.get(name, version)

    def rollback(self, name: str, *, by: str = "", reason: str = "", to: int | None = None) -> AdapterVersion:
        """Serve the version that was current before the current one again. Conflict when there is none, or
        when it is not ``to`` (the version a caller loaded first: the alias changed meanwhile)."""
        check_name(name)
        if not self._version_numbers(name):
            raise NotFound(f"adapter {name!r} not found (known: {self.names()})", param="adapter")
        with self._locked(name):
            state = self._state(name)
            if len(state["stack"]) < 2:
                raise Conflict(f"adapter {name!r} has no earlier promoted version to roll back to "
                               f"(current: {state['current']})", param="adapter")
            if to is not None and state["stack"][-2] != to:
                raise Conflict(f"adapter {name!r} would roll back to v{state['stack'][-2]}, not v{to}: its versions "
                               f"changed meanwhile; try again", param="adapter")
            old = state["stack"].pop()
            back = state["current"] = state["stack"][-1]
            state["history"].append({"action": "rollback", "version": back, "from": old,
                                     "at": time.time(), "by": by, "reason": reason})
            write_json_atomic(self.root / name / STATE, state)
        return self.get(name, back)

    def summary(self) -> list[dict[str, Any]]:
        """Every adapter with its current version and versions (what GET /v1/adapters returns)."""
        out = []
        for name in self.names():
            vs = self.versions(name)
            cur = next((v for v in vs if v.current), None)
            out.append({"name": name, "current": cur.version if cur else None,
                        "current_lora_name": cur.lora_name if cur else None,
                        "versions": [v.to_dict() for v in vs], "history": self.history(name)})
        return out
