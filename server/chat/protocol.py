"""OpenAI-compatible wire format of ``/v1/chat/completions`` and ``/v1/models`` (the subset pubmind
implements, plus pubmind's retrieval extensions ``k``, ``filters``, ``retrieval`` and the ``citations``,
``unsupported_citations`` and ``answer_id`` response fields)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from server.query.protocol import MODEL, Citation, QueryFilters

STOP = msgspec.Meta(max_length=256)


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: Annotated[str, MODEL]
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    n: int = 1
    stop: Annotated[str, STOP] | Annotated[list[Annotated[str, STOP]], msgspec.Meta(max_length=4)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    # pubmind extensions (retrieval on the last user message)
    k: int | None = None
    filters: QueryFilters | None = None
    retrieval: Literal["dense", "lexical", "hybrid"] | None = None


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str = ""


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    citations: list[Citation]
    unsupported_citations: list[int]
    answer_id: str
    index_version: str | None
    object: Literal["chat.completion"] = "chat.completion"


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    object: Literal["chat.completion.chunk"]  # required (not a default) so omit_defaults keeps it
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    citations: list[Citation] | None = None
    unsupported_citations: list[int] | None = None
    answer_id: str | None = None


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    created: int
    owned_by: str = "pubmind"
    object: str = "model"
    root: str | None = None  # the base model, or the NAME@vN an alias currently serves


class ModelList(msgspec.Struct, kw_only=True):
    data: list[ModelCard]
    object: str = "list"
