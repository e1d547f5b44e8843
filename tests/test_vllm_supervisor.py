"""vLLM supervision: the command line, startup failure with the log tail, the startup timeout, stop() leaving
no process behind, and the vLLM HTTP client against the real server."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from pubmind.errors import ConfigError, InvalidInput, NotFound, ServiceUnavailable
from tests.fixtures_server import free_port, make_settings


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); treat it as gone when its state is Z
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_command_line(tmp_path: Path) -> None:
    from generation.supervisor import VllmSupervisor

    s = make_settings(tmp_path, llm={"model": "/models/m", "vllm_port": 8123, "max_loras": 3, "max_lora_rank": 16,
                                     "max_model_len": 2048, "vllm_args": ["--dtype", "float32"]})
    sup = VllmSupervisor(s, adapters=lambda: {"onco@v2": "/a/onco/v2", "cardio@v1": "/a/cardio/v1"})
    cmd = sup.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and cmd[0].endswith("python")
    joined = " ".join(cmd)
    for part in ("--model /models/m", "--served-model-name base", "--port 8123", "--enable-lora",
                 "--max-lora-rank 16", "--max-loras 3", "--max-model-len 2048",
                 "--lora-modules cardio@v1=/a/cardio/v1 onco@v2=/a/onco/v2", "--dtype float32"):
        assert part in joined, part
    assert sup.url == "http://127.0.0.1:8123"
    with pytest.raises(ConfigError, match=re.escape("llm.vllm_python='/nope/python'")):
        VllmSupervisor(make_settings(tmp_path, llm={"vllm_python": "/nope/python"}))


@pytest.mark.vllm
def test_startup_failure_reports_log_tail(tmp_path: Path) -> None:
    from generation.supervisor import VllmSupervisor

    s = make_settings(tmp_path, llm={"model": str(tmp_path / "no-such-model"), "vllm_port": free_port()})
    sup = VllmSupervisor(s)
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"vLLM exited with code \d+ during startup") as e:
        sup.start()
    assert "no-such-model" in e.value.message  # vLLM's own complaint, from the log tail
    assert time.monotonic() - t0 < 240
    assert sup.state == "failed" and _gone(sup.proc.pid)
    assert (tmp_path / "logs" / "vllm.log").read_text().count("starting:") == 1


@pytest.mark.vllm
def test_startup_timeout_kills_the_group(tmp_path: Path, tiny_model_dir: Path) -> None:
    from generation.supervisor import VllmSupervisor

    s = make_settings(tmp_path, llm={"model": str(tiny_model_dir), "vllm_port": free_port(),
                                     "startup_timeout_seconds": 3, "vllm_args": ["--dtype", "float32"]})
    sup = VllmSupervisor(s)
    with pytest.raises(ServiceUnavailable, match=r"not healthy within llm.startup_timeout_seconds=3"):
        sup.start()
    pid = sup.proc.pid
    assert _gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing left in its process group
    sup.stop()  # idempotent


@pytest.mark.vllm
def test_refuses_port_in_use(tmp_path: Path, tiny_model_dir: Path, vllm_server: str) -> None:
    from generation.supervisor import VllmSupervisor

    port = int(vllm_server.rsplit(":", 1)[1])
    sup = VllmSupervisor(make_settings(tmp_path, llm={"model": str(tiny_model_dir), "vllm_port": port}))
    with pytest.raises(ServiceUnavailable, match="something already answers"):
        sup.start()
    assert sup.proc is None


@pytest.mark.vllm
def test_vllm_client_against_real_server(vllm_server: str, tmp_path: Path) -> None:
    from generation.vllm_client import SyncVllmClient

    with SyncVllmClient(vllm_server, timeout_seconds=60) as c:
        c.health()
        assert c.models()[0] == "base"  # (+ any adapters other tests loaded into the shared server)
        r = c.chat([{"role": "user", "content": "hello"}], "base", max_tokens=6)
        assert r.completion_tokens == 6 and r.finish_reason == "length" and r.prompt_tokens > 0
        deltas = list(c.chat_stream([{"role": "user", "content": "hello"}], "base", max_tokens=6))
        assert "".join(d.text for d in deltas) == r.text  # greedy: the same text
        assert deltas[-1].completion_tokens == 6
        with pytest.raises(NotFound, match="does not exist"):
            c.chat([{"role": "user", "content": "x"}], "nope", max_tokens=2)
        with pytest.raises(InvalidInput, match="vLLM chat completion failed \\(400\\)"):
            c.chat([{"role": "user", "content": "x " * 3000}], "base", max_tokens=2)  # > max_model_len
        with pytest.raises((NotFound, InvalidInput), match="vLLM loading LoRA adapter 'x@v1'"):
            c.load_lora_adapter("x@v1", str(tmp_path / "missing"))
