"""AdapterRegistry: versioned folders appear atomically, promote/rollback, resolve, crash safety."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from finetune.registry import AdapterRegistry, check_name, parse_model
from pubmind.errors import Conflict, InvalidInput, NotFound


def adapter_dir(tmp_path: Path, tag: str = "x") -> Path:
    d = tmp_path / f"src-{tag}"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "tag": tag}))
    (d / "adapter_model.safetensors").write_bytes(os.urandom(64))
    return d


@pytest.fixture()
def reg(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "adapters")


def test_versions_are_numbered_and_carry_their_manifest(reg: AdapterRegistry, tmp_path: Path) -> None:
    v1 = reg.create_version("onco", adapter_dir(tmp_path, "a"), {"base_model": "tiny", "dataset_hash": "h1"})
    v2 = reg.create_version("onco", adapter_dir(tmp_path, "b"), {"base_model": "tiny", "parent_version": 1})
    assert (v1.version, v1.lora_name, v2.lora_name) == (1, "onco@v1", "onco@v2")
    assert Path(v2.path) == reg.root / "onco" / "v2"
    assert json.loads((Path(v2.path) / "adapter_config.json").read_text())["tag"] == "b"
    assert v1.manifest["dataset_hash"] == "h1"
    assert v1.manifest["created_at"] > 0
    assert reg.names() == ["onco"]
    assert [v.version for v in reg.versions("onco")] == [1, 2]
    assert reg.current("onco") is None  # created, not promoted
    with pytest.raises(NotFound, match="no promoted version"):
        reg.resolve("onco")
    assert reg.resolve("onco@v2", any_version=True).version == 2
    updated = reg.update_manifest("onco", 2, evaluation={"promote": True})
    assert updated.manifest["evaluation"] == {"promote": True}
    assert updated.manifest["base_model"] == "tiny"


def test_resolve_errors(reg: AdapterRegistry, tmp_path: Path) -> None:
    reg.promote("onco", reg.create_version("onco", adapter_dir(tmp_path), {}).version)
    with pytest.raises(NotFound, match="adapter 'cardio' not found"):
        reg.resolve("cardio")
    with pytest.raises(NotFound, match="has no version 7"):
        reg.resolve("onco@v7")
    for bad in ("onco@7", "onco@v", "on co", "", "base", "a@v1@v2"):
        with pytest.raises(InvalidInput, match="model"):
            reg.resolve(bad)


def test_promote_and_rollback_history(reg: AdapterRegistry, tmp_path: Path) -> None:
    for tag in "abc":
        reg.create_version("onco", adapter_dir(tmp_path, tag), {})
    reg.promote("onco", 1)
    with pytest.raises(Conflict, match="no earlier promoted version"):
        reg.rollback("onco")
    reg.promote("onco", 2)
    reg.promote("onco", 3)
    assert reg.resolve("onco").lora_name == "onco@v3"
    assert reg.recent("onco", 2) == [3, 2]
    assert reg.rollback("onco", by="admin").version == 2
    assert reg.resolve("onco").lora_name == "onco@v2"
    assert reg.rollback("onco").version == 1
    assert [h["action"] for h in reg.history("onco")] == ["promote", "promote", "promote", "rollback", "rollback"]
    assert reg.serving_modules() == {"onco@v1": str(reg.root / "onco" / "v1")}
    # a fresh registry object (a restarted server) sees the same state
    assert AdapterRegistry(reg.root).resolve("onco").version == 1
    with pytest.raises(NotFound):
        reg.promote("onco", 9)


def test_failed_copy_leaves_no_version_and_no_temp(reg: AdapterRegistry, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    reg.promote("onco", reg.create_version("onco", adapter_dir(tmp_path, "a"), {}).version)
    calls = {"n": 0}
    real_copy = shutil.copy2

    def flaky(src: str, dst: str) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copy2", flaky)
    with pytest.raises(OSError, match="disk full"):
        reg.create_version("onco", adapter_dir(tmp_path, "b"), {})
    assert sorted(p.name for p in (reg.root / "onco").iterdir() if not p.name.startswith(".lock")) == \
        ["state.json", "v1"]
    assert reg.resolve("onco").version == 1
    monkeypatch.setattr(shutil, "copy2", real_copy)
    assert reg.create_version("onco", adapter_dir(tmp_path, "c"), {}).version == 2


def test_crash_while_writing_the_alias_keeps_the_previous_one(reg: AdapterRegistry, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    reg.create_version("onco", adapter_dir(tmp_path, "a"), {})
    reg.create_version("onco", adapter_dir(tmp_path, "b"), {})
    reg.promote("onco", 1)

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        reg.promote("onco", 2)
    monkeypatch.undo()
    assert reg.resolve("onco").version == 1
    assert not [p for p in (reg.root / "onco").iterdir() if p.name.startswith(".state.json")]  # temp removed


def test_bad_inputs(reg: AdapterRegistry, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match=r"no adapter_config\.json"):
        reg.create_version("onco", empty, {})
    with pytest.raises(InvalidInput, match="adapter must be"):
        reg.create_version("bad name", adapter_dir(tmp_path), {})
    with pytest.raises(NotFound, match="adapter 'ghost' not found"):
        reg.versions("ghost")


@pytest.mark.parametrize("bad", ["onco\n", "onco\r\n", "\nonco", "on\nco", "../onco", "onco/../x", "..", "/etc"])
def test_names_with_newlines_or_paths_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="adapter must be"):
        check_name(bad)
    with pytest.raises(InvalidInput, match="model"):
        parse_model(f"{bad}@v1")


def test_readers_get_only_current_and_previously_promoted_versions(reg: AdapterRegistry, tmp_path: Path) -> None:
    for tag in "abc":
        reg.create_version("onco", adapter_dir(tmp_path, tag), {})
    reg.promote("onco", 1)
    reg.promote("onco", 2)  # v3: trained, rejected by the gate, never promoted
    assert reg.resolve("onco@v1").version == 1  # previously promoted
    assert reg.resolve("onco@v2").version == 2  # current
    with pytest.raises(NotFound, match=r"'onco@v3' is not available"):
        reg.resolve("onco@v3")
    assert reg.resolve("onco@v3", any_version=True).version == 3  # operators may still try it
    reg.rollback("onco")
    assert reg.resolve("onco@v2").version == 2  # rolled back from: still a promoted version
    assert reg.promoted_versions("onco") == {1, 2}


def test_rollback_to_an_expected_version(reg: AdapterRegistry, tmp_path: Path) -> None:
    for tag in "abc":
        reg.promote("onco", reg.create_version("onco", adapter_dir(tmp_path, tag), {}).version)
    assert reg.rollback_target("onco").version == 2
    with pytest.raises(Conflict, match="would roll back to v2, not v1"):
        reg.rollback("onco", to=1)
    assert reg.current("onco").version == 3  # unchanged
    assert reg.rollback("onco", to=2).version == 2
