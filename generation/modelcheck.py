"""Check the base model folder up front and derive the context length vLLM will accept.

vLLM refuses ``--max-model-len`` above what the model's config allows (``max_position_embeddings`` and
friends), so ``llm.max_model_len`` unset means "the model's maximum" and an explicit value above it is capped
with a warning. ``check_model`` also makes sure the tokenizer loads and has a chat template (the serving prompt
is a chat), with errors that name the problem instead of a vLLM traceback minutes later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pubmind.errors import ConfigError
from pubmind.settings import Settings, model_context_length

log = logging.getLogger("pubmind.model")

@dataclass(frozen=True)
class ModelInfo:
    model: str
    max_context: int  # tokens, from the model's config
    max_model_len: int  # what vLLM gets: llm.max_model_len capped at max_context, or max_context


def check_model(settings: Settings) -> ModelInfo:
    """Check ``settings.llm.model`` (a folder or a hub id already in the cache): config with a context length,
    a tokenizer that loads, a chat template. Returns the context vLLM gets; warns when it caps the setting."""
    from transformers import AutoTokenizer

    model = settings.llm.model
    if model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
        raise ConfigError(f"llm.model={model!r}: no such folder", param="llm.model")
    max_context = model_context_length(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"llm.model={model!r}: cannot load its tokenizer: {e}", param="llm.model") from e
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"llm.model={model!r}: its tokenizer has no chat template (tokenizer_config.json "
                          f"'chat_template'); pubmind serves chat prompts, use an instruct/chat model",
                          param="llm.model")
    wanted = settings.llm.max_model_len
    if wanted is None:
        return ModelInfo(model, max_context, max_context)
    if wanted > max_context:
        log.warning("llm.max_model_len=%d is above %s's maximum context %d: using %d", wanted, model, max_context,
                    max_context)
        return ModelInfo(model, max_context, max_context)
    return ModelInfo(model, max_context, wanted)


def resolve_context(settings: Settings, info: ModelInfo | None = None) -> Settings:
    """``settings`` with ``llm.max_model_len`` set to what vLLM gets (``check_model``), for every later reader
    (prompt budgets, training lengths, the job processes it launches)."""
    info = info or check_model(settings)
    if settings.llm.max_model_len == info.max_model_len:
        return settings
    return settings.model_copy(update={"llm": settings.llm.model_copy(update={"max_model_len": info.max_model_len})})
