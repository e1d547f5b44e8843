"""Wire format of ``GET /health`` and ``GET /v1/articles/{pmid}``."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from pubmind.records import Article

MAX_PMID = 2**31 - 1  # PMIDs are 1-9 digits; anything larger is refused before it reaches SQLite


class ArticleResponse(msgspec.Struct, kw_only=True):
    url: str
    article: Article
    retracted: bool


class HealthResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Anyone sees ``status`` and a ``reason`` without internals; an admin key also gets ``vllm`` (URL, pid,
    supervisor state, restarts), ``index`` (version, counts, folder), ``versions`` (the library stack) and the
    detailed reasons."""

    status: Literal["ready", "unavailable"]
    reason: str | None
    vllm: dict[str, Any] | None = None
    index: dict[str, Any] | None = None
    versions: dict[str, str | None] | None = None  # pubmind, torch, transformers, peft, vLLM, ... (admins)
