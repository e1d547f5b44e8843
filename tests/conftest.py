"""Shared fixtures. Area-specific fixtures live in tests/fixtures_<area>.py (registered below) so
that each area's fixtures stay next to each other and out of each other's way."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pubmind.settings import Settings

os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures_ingest",
    "tests.fixtures_retrieval",
    "tests.fixtures_llm",
    "tests.fixtures_server",
    "tests.fixtures_finetune",
]

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data). Tests read it in place, never copy it."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray (2 CPUs, no GPU) for the whole session: a process can hold only one Ray, so every test
    that runs on Ray shares this one."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def settings_at(home: str | Path, **overrides: Any) -> Settings:
    """Test-preset settings with ``home`` and nested ``overrides`` (e.g. ``index={"kind": "hnsw"}``): the one
    way tests build settings (the ``make_settings``/``settings`` fixtures call it; session-scoped fixtures,
    which cannot use them, call it directly)."""
    from pubmind.settings import load_settings

    return load_settings(preset="test", home=str(home), **overrides)


@pytest.fixture()
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """The one way tests build settings: ``make_settings(home=None, **overrides)`` gives test-preset settings
    (nested dict overrides, e.g. ``index={"kind": "hnsw"}``) with a fresh home under tmp_path by default.

    PUBMIND_PRESET/PUBMIND_HOME are also set for the test, so a CLI or a subprocess started by the test
    resolves the same settings."""
    monkeypatch.setenv("PUBMIND_PRESET", "test")
    monkeypatch.setenv("PUBMIND_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PUBMIND_CONFIG", raising=False)

    def make(home: str | Path | None = None, **overrides: Any) -> Settings:
        return settings_at(home or tmp_path / "home", **overrides)

    return make


@pytest.fixture()
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Test-preset settings with a fresh PUBMIND_HOME under tmp_path."""
    return make_settings()


@dataclass
class CliResult:
    code: int
    out: str  # stdout
    err: str  # stderr

    def __iter__(self) -> Iterator[Any]:  # code, out, err = cli(...)
        return iter((self.code, self.out, self.err))


@pytest.fixture()
def cli(settings: Settings) -> Callable[..., CliResult]:
    """The one CLI runner: ``cli("stats", "--json")`` runs ``pubmind --home HOME --preset test stats --json`` in
    process (settings: the ``settings`` fixture's home) and returns exit code, stdout and stderr."""
    from click.testing import CliRunner

    from pubmind.cli import main

    def run(*args: str, home: str | Path | None = None, input: str | None = None) -> CliResult:
        r = CliRunner().invoke(main, ["--home", str(home or settings.home), "--preset", "test", *args],
                               input=input, catch_exceptions=False)
        return CliResult(r.exit_code, r.stdout, r.stderr)

    return run
