"""The installed environments match their lock files in locks/ (scripts/setup.sh installs from them).

A drifted environment (a package upgraded or added by hand, a lock changed without re-running setup) fails
here, naming each package with its locked and installed versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pubmind.versions import installed_versions, lock_drift, lock_misses, pyproject_requirements, read_lock

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
VLLM_VENV = ROOT / ".venv-vllm"


def test_app_venv_matches_app_lock() -> None:
    drift = "\n".join(lock_drift(read_lock(LOCKS / "app.txt"), installed_versions()))
    assert not drift, (f"{sys.prefix} has drifted from locks/app.txt (scripts/setup.sh syncs it back; a new "
                       f"dependency goes in pyproject.toml, then scripts/lock.sh):\n{drift}")


def test_app_lock_covers_pyproject() -> None:
    """Every dependency of pyproject.toml (with the extras setup installs) is in locks/app.txt, in range."""
    misses = "\n".join(lock_misses(pyproject_requirements(ROOT / "pyproject.toml", ("minilm", "dev", "ray")),
                                   read_lock(LOCKS / "app.txt")))
    assert not misses, f"locks/app.txt is older than pyproject.toml (run scripts/lock.sh):\n{misses}"


def test_app_lock_pins_the_cpu_torch() -> None:
    assert read_lock(LOCKS / "app.txt")["torch"] == "2.13.0+cpu"


def test_vllm_cpu_lock_pins_the_cpu_torch() -> None:
    assert read_lock(LOCKS / "vllm-cpu.txt")["torch"] == "2.13.0+cpu"


@pytest.mark.parametrize("cuda_only", ["torchvision", "torchaudio", "torchcodec", "triton"])
def test_vllm_cpu_lock_leaves_out_cuda_builds(cuda_only: str) -> None:
    assert cuda_only not in read_lock(LOCKS / "vllm-cpu.txt")


def test_cuda_and_cpu_vllm_locks_pin_the_same_release() -> None:
    assert read_lock(LOCKS / "vllm-cuda.txt")["vllm"] == read_lock(LOCKS / "vllm-cpu.txt")["vllm-cpu"]


def test_vllm_venv_matches_its_lock() -> None:
    """.venv-vllm against the lock scripts/setup.sh installed it from (named in its stamp)."""
    stamp = VLLM_VENV / ".pubmind-stamp"
    if not stamp.is_file():
        pytest.skip(f"no {stamp}: .venv-vllm was not installed by scripts/setup.sh (PUBMIND_SKIP_VLLM=1?)")
    first = stamp.read_text().split()[0]
    assert first.startswith("lock="), f"{stamp} names no lock (an older scripts/setup.sh made it): re-run setup"
    lock = first.removeprefix("lock=")
    r = subprocess.run([str(VLLM_VENV / "bin" / "python"), "-P", str(ROOT / "pubmind" / "versions.py"),
                        "--check", str(ROOT / lock)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f".venv-vllm has drifted from {lock} (scripts/setup.sh syncs it back):\n{r.stderr}"
