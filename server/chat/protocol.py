"""OpenAI-compatible wire format of ``/v1/chat/completions`` and ``/v1/models``.

The request accepts every field of OpenAI's Chat Completions request (the pinned ``openai`` package's
``CompletionCreateParams``), each bounded. What maps onto vLLM is passed on (``SAMPLING_FIELDS``); what does not
change a retrieval-grounded answer is accepted and ignored; fields outside the schema are ignored and logged once
per name (chat UIs add their own). pubmind's extensions ``k``, ``filters`` and ``retrieval`` keep their strict
validation. Responses add ``citations``, ``unsupported_citations``, ``answer_id`` and ``index_version``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from server.query.protocol import MODEL, Citation, QueryFilters

SHORT = msgspec.Meta(max_length=256)
STOP = msgspec.Meta(max_length=256)
OBJECT = msgspec.Meta(max_length=64)  # free-form option objects: at most 64 keys
TOOLS = msgspec.Meta(max_length=128)
TOKENS = msgspec.Meta(ge=1, le=2**31 - 1, description="Served up to llm.max_tokens (finish_reason 'length' then).")

# Passed to vLLM as they are (vLLM's OpenAI server implements them).
SAMPLING_FIELDS = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
                   "logit_bias", "response_format")


class ContentPart(msgspec.Struct, kw_only=True):
    type: Annotated[str, SHORT]
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    """A message of any OpenAI role; ``tool_calls``/``tool_call_id``/``refusal``/``audio`` are accepted and
    ignored (pubmind answers in text)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, SHORT] | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = False
    include_obfuscation: bool | None = None  # accepted; pubmind sends no obfuscation padding


class ResponseFormat(msgspec.Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Annotated[dict[str, Any], OBJECT] | None = None

    def to_vllm(self) -> dict[str, Any]:
        return {"type": self.type} if self.json_schema is None else {"type": self.type, "json_schema": self.json_schema}


ToolChoice = Literal["none", "auto", "required"] | Annotated[dict[str, Any], OBJECT]


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, MODEL]
    messages: list[ChatMessage]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, TOKENS] | None = None
    max_completion_tokens: Annotated[int, TOKENS] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = 1
    # sampling, honoured by vLLM
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: Annotated[str, STOP] | Annotated[list[Annotated[str, STOP]], msgspec.Meta(max_length=4)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    logit_bias: Annotated[dict[str, Annotated[int, msgspec.Meta(ge=-100, le=100)]], msgspec.Meta(max_length=300)
                          ] | None = None
    response_format: ResponseFormat | None = None
    # tools: pubmind answers in text; only a request that requires a tool call is refused
    tools: Annotated[list[dict[str, Any]], TOOLS] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[dict[str, Any]], TOOLS] | None = None
    function_call: Literal["none", "auto"] | Annotated[dict[str, Any], OBJECT] | None = None
    # accepted, no effect on a RAG answer
    user: Annotated[str, SHORT] | None = None
    metadata: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=512)]], msgspec.Meta(max_length=16)
                        ] | None = None
    store: bool | None = None
    service_tier: Annotated[str, SHORT] | None = None
    reasoning_effort: Annotated[str, SHORT] | None = None
    verbosity: Annotated[str, SHORT] | None = None
    modalities: Annotated[list[Annotated[str, SHORT]], msgspec.Meta(max_length=4)] | None = None
    audio: Annotated[dict[str, Any], OBJECT] | None = None
    prediction: Annotated[dict[str, Any], OBJECT] | None = None
    web_search_options: Annotated[dict[str, Any], OBJECT] | None = None
    moderation: Annotated[dict[str, Any], OBJECT] | None = None
    prompt_cache_key: Annotated[str, SHORT] | None = None
    prompt_cache_options: Annotated[dict[str, Any], OBJECT] | None = None
    prompt_cache_retention: Annotated[str, SHORT] | None = None
    safety_identifier: Annotated[str, SHORT] | None = None
    # pubmind extensions (retrieval on the last user message)
    k: int | None = None
    filters: QueryFilters | None = None
    retrieval: Literal["dense", "lexical", "hybrid"] | None = None


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str = ""
    refusal: None = None
    annotations: list[dict[str, Any]] = msgspec.field(default_factory=list)  # OpenAI url_citation annotations


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


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
    answer_id: str | None  # None for ':plain' models (nothing retrieved, nothing stored)
    index_version: str | None
    object: Literal["chat.completion"] = "chat.completion"


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    created: int
    owned_by: str = "pubmind"
    object: str = "model"
    root: str | None = None  # the base model, or the NAME@vN an alias currently serves


class ModelList(msgspec.Struct, kw_only=True):
    data: list[ModelCard]
    object: str = "list"
