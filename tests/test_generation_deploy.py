"""generation.deploy.AdapterDeployer against a recording fake vLLM client and a real registry: promotion and
rollback load before the alias moves and undo on failure (issue 10 item 3); the loaded-adapter cap (item 6)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast

import pytest

from finetune.registry import AdapterRegistry
from generation.deploy import AdapterDeployer
from generation.vllm_client import VllmClient
from pubmind.errors import Conflict, InvalidInput, NotFound

T = TypeVar("T")


class FakeVllm:
    """Records loads/unloads; ``refuse`` names adapters whose load vLLM answers with a 400."""

    base_url = "http://fake"

    def __init__(self, loaded: set[str] | None = None, refuse: set[str] | None = None) -> None:
        self.loaded = {"base", *(loaded or set())}
        self.refuse = refuse or set()
        self.calls: list[str] = []

    async def models(self) -> list[str]:
        return sorted(self.loaded)

    async def load_lora_adapter(self, lora_name: str, path: str) -> None:
        self.calls.append(f"load {lora_name}")
        if lora_name in self.refuse:
            raise InvalidInput(f"vLLM loading LoRA adapter {lora_name!r} failed (400): bad adapter")
        self.loaded.add(lora_name)

    async def unload_lora_adapter(self, lora_name: str) -> None:
        self.calls.append(f"unload {lora_name}")
        self.loaded.discard(lora_name)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture()
def reg(tmp_path: Path) -> AdapterRegistry:
    reg = AdapterRegistry(tmp_path / "adapters")
    for name, n in (("onco", 3), ("cardio", 1)):
        for i in range(n):
            src = tmp_path / f"src-{name}-{i}"
            src.mkdir()
            (src / "adapter_config.json").write_text(json.dumps({"r": 8}))
            reg.create_version(name, src, {})
    return reg


def deployer(vllm: FakeVllm, reg: AdapterRegistry, max_loaded: int = 8) -> AdapterDeployer:
    return AdapterDeployer(cast(VllmClient, vllm), reg, keep_loaded=2, max_loaded=max_loaded)


def test_promote_loads_before_the_alias_moves(reg: AdapterRegistry) -> None:
    reg.promote("onco", 1)
    vllm = FakeVllm({"onco@v1"})
    seen: list[int | None] = []
    real = reg.promote

    def promote(name: str, version: int, **kw: str) -> object:
        seen.append(reg.current("onco").version)  # type: ignore[union-attr]
        assert "load onco@v2" in vllm.calls  # vLLM had it before the alias moved
        return real(name, version, **kw)

    reg.promote = promote  # type: ignore[method-assign]
    report = run(deployer(vllm, reg).promote("onco", 2, by="admin", reason="test"))
    assert seen == [1]
    assert report["current"] == "onco@v2"
    assert reg.current("onco").version == 2  # type: ignore[union-attr]


def test_a_version_vllm_refuses_leaves_the_alias(reg: AdapterRegistry) -> None:
    reg.promote("onco", 1)
    vllm = FakeVllm({"onco@v1"}, refuse={"onco@v2"})
    with pytest.raises(InvalidInput, match="bad adapter"):
        run(deployer(vllm, reg).promote("onco", 2))
    assert reg.current("onco").version == 1  # type: ignore[union-attr]
    assert reg.history("onco")[-1]["version"] == 1


def test_a_failed_alias_move_unloads_what_was_loaded_for_it(reg: AdapterRegistry) -> None:
    reg.promote("onco", 1)
    vllm = FakeVllm({"onco@v1"})

    def broken(*a: object, **kw: object) -> object:
        raise OSError("disk full")

    reg.promote = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        run(deployer(vllm, reg).promote("onco", 2))
    assert vllm.calls == ["load onco@v2", "unload onco@v2"]
    assert "onco@v2" not in vllm.loaded


def test_rollback_loads_the_previous_version_first(reg: AdapterRegistry) -> None:
    reg.promote("onco", 1)
    reg.promote("onco", 2)
    reg.promote("onco", 3)
    vllm = FakeVllm({"onco@v3"}, refuse={"onco@v2"})
    with pytest.raises(InvalidInput):
        run(deployer(vllm, reg).rollback("onco"))
    assert reg.current("onco").version == 3  # type: ignore[union-attr]
    vllm.refuse.clear()
    report = run(deployer(vllm, reg).rollback("onco"))
    assert report["current"] == "onco@v2"
    assert vllm.calls[-2:] == ["load onco@v2", "unload onco@v3"]  # loaded first; v3 is beyond keep_loaded now


def test_loaded_adapters_are_capped_by_evicting_non_current_versions(reg: AdapterRegistry) -> None:
    reg.promote("onco", 1)
    reg.promote("onco", 2)
    reg.promote("cardio", 1)
    vllm = FakeVllm({"onco@v1", "onco@v2"})
    d = deployer(vllm, reg, max_loaded=2)
    run(d.loaded())
    assert run(d.ensure_loaded("cardio@v1", reg.get("cardio", 1).path)) is True
    assert vllm.loaded == {"base", "onco@v2", "cardio@v1"}  # onco@v1 (not current) made room
    with pytest.raises(Conflict, match=r"llm\.max_loaded_adapters=2"):  # both slots hold current versions
        run(d.ensure_loaded("onco@v1", reg.get("onco", 1).path))


def test_readers_cannot_resolve_a_never_promoted_version(reg: AdapterRegistry) -> None:
    reg.promote("onco", 1)
    with pytest.raises(NotFound, match="not available"):
        reg.resolve("onco@v3")


def test_deployer_settings(make_settings: Callable[..., object], reg: AdapterRegistry) -> None:
    s = make_settings(llm={"max_loaded_adapters": 5}, finetune={"keep_loaded": 3})
    d = AdapterDeployer.from_settings(cast(VllmClient, FakeVllm()), reg, s)  # type: ignore[arg-type]
    assert (d.keep_loaded, d.max_loaded) == (3, 5)
