"""Fixtures for the tiny causal LM (and, added by the server tests, the real vLLM server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A tiny random Llama (+ BPE tokenizer trained on PubMedQA text, + chat template), saved locally."""
    from finetune.tiny import build_tiny_causal_lm

    data = json.loads((shared_data / "pubmedqa/data/ori_pqal.json").read_text())
    texts = [" ".join(v["CONTEXTS"]) + " " + v["LONG_ANSWER"] + " " + v["QUESTION"] for v in data.values()]
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llm"), texts)


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM OpenAI server (CPU build, .venv-vllm) serving ``tiny_model_dir`` as 'base' with runtime
    LoRA loading enabled (max rank 8, 2 adapters); yields its URL and stops it (whole process group) at the
    end of the session. Started through ``generation.supervisor.VllmSupervisor``; log under the fixture's home.
    Its per-launch API key is exported as ``PUBMIND_LLM__VLLM_API_KEY`` for the session, so settings that point
    ``llm.vllm_url`` at it (and the job processes they launch) authenticate.
    Only tests marked ``@pytest.mark.vllm`` should use it (startup takes ~1 minute). For quicker local
    iterations, ``PUBMIND_TEST_VLLM_URL`` points it at an already running vLLM (same flags, tiny model)."""
    import os

    if os.environ.get("PUBMIND_TEST_VLLM_URL"):
        yield os.environ["PUBMIND_TEST_VLLM_URL"]
        return

    from generation.supervisor import VllmSupervisor
    from tests.conftest import settings_at
    from tests.fixtures_server import free_port

    home = tmp_path_factory.mktemp("vllm-home")
    settings = settings_at(home, llm={"model": str(tiny_model_dir), "vllm_port": free_port(), "max_loras": 2,
                                        "max_lora_rank": 8, "vllm_args": ["--dtype", "float32"]})
    sup = VllmSupervisor(settings)
    sup.start()
    os.environ["PUBMIND_LLM__VLLM_API_KEY"] = sup.key_path.read_text().strip()
    try:
        yield sup.url
    finally:
        os.environ.pop("PUBMIND_LLM__VLLM_API_KEY", None)
        sup.stop()
