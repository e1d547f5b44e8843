"""Shared fixtures. Area-specific fixtures live in tests/fixtures_<area>.py (registered below) so
that each area's fixtures stay next to each other and out of each other's way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Test-preset settings with a fresh PUBMIND_HOME under tmp_path."""
    from pubmind.settings import load_settings

    monkeypatch.setenv("PUBMIND_PRESET", "test")
    monkeypatch.setenv("PUBMIND_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PUBMIND_CONFIG", raising=False)
    return load_settings()
