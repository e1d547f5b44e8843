"""generation.modelcheck: the model folder checked up front and vLLM's context length derived from the model
(issue 10 item 1: a model whose context is under 8192 tokens must serve without hand-set max_model_len)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from generation.modelcheck import check_model, resolve_context
from pubmind.errors import ConfigError
from pubmind.settings import Settings

TINY_CONTEXT = 2048  # finetune.tiny's max_position_embeddings


def test_context_is_derived_from_the_model_when_unset(make_settings: Callable[..., Settings],
                                                      tiny_model_dir: Path) -> None:
    s = make_settings(llm={"model": str(tiny_model_dir), "max_model_len": None})
    assert check_model(s).max_model_len == TINY_CONTEXT
    assert resolve_context(s).llm.max_model_len == TINY_CONTEXT
    assert s.llm.context_len == TINY_CONTEXT


def test_an_explicit_context_above_the_models_is_capped_with_a_warning(
        make_settings: Callable[..., Settings], tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = make_settings(llm={"model": str(tiny_model_dir), "max_model_len": 8192})
    with caplog.at_level(logging.WARNING, logger="pubmind.model"):
        info = check_model(s)
    assert (info.max_context, info.max_model_len) == (TINY_CONTEXT, TINY_CONTEXT)
    assert "llm.max_model_len=8192 is above" in caplog.text


def test_an_explicit_context_within_the_models_is_kept(make_settings: Callable[..., Settings],
                                                       tiny_model_dir: Path) -> None:
    s = make_settings(llm={"model": str(tiny_model_dir), "max_model_len": 1024})
    assert check_model(s).max_model_len == 1024


def test_the_supervisor_passes_the_derived_context(make_settings: Callable[..., Settings],
                                                   tiny_model_dir: Path) -> None:
    from generation.supervisor import VllmSupervisor

    cmd = VllmSupervisor(make_settings(llm={"model": str(tiny_model_dir), "max_model_len": None})).command()
    assert cmd[cmd.index("--max-model-len") + 1] == str(TINY_CONTEXT)


def test_a_missing_model_folder_is_named(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        check_model(make_settings(llm={"model": str(tmp_path / "nope")}))


def test_a_folder_without_config_is_named(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read the model's config\.json"):
        check_model(make_settings(llm={"model": str(tmp_path / "empty")}))


def test_a_tokenizer_without_chat_template_is_named(make_settings: Callable[..., Settings], tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    model = shutil.copytree(tiny_model_dir, tmp_path / "no-template")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="has no chat template"):
        check_model(make_settings(llm={"model": str(model)}))
