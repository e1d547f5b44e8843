"""Wire format of ``POST /v1/responses``: OpenAI's Responses API for plain text input and output (what newer
clients use), over the same retrieval, citations and annotations as ``/v1/chat/completions``. Fields of
OpenAI's request that change nothing here are accepted and ignored, like unknown fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from server.chat.protocol import OBJECT, SHORT, TOKENS, TOOLS, ToolChoice
from server.query.protocol import MODEL, Citation, QueryFilters


class InputPart(msgspec.Struct, kw_only=True):
    type: Annotated[str, SHORT]  # "input_text" ("output_text" in earlier assistant turns)
    text: str | None = None


class InputMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[InputPart]
    type: Literal["message"] | None = "message"


class ResponseRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, MODEL]
    input: str | Annotated[list[InputMessage], msgspec.Meta(max_length=1000)]
    instructions: str | None = None  # system message of ':plain' models (pubmind's own prompt otherwise)
    stream: bool | None = False
    max_output_tokens: Annotated[int, TOKENS] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    tools: Annotated[list[dict[str, Any]], TOOLS] | None = None
    tool_choice: ToolChoice | None = None
    previous_response_id: Annotated[str, SHORT] | None = None
    background: bool | None = None
    text: Annotated[dict[str, Any], OBJECT] | None = None
    metadata: Annotated[dict[str, Any], msgspec.Meta(max_length=16)] | None = None
    user: Annotated[str, SHORT] | None = None
    store: bool | None = None
    # pubmind extensions (retrieval on the last user message)
    k: int | None = None
    filters: QueryFilters | None = None
    retrieval: Literal["dense", "lexical", "hybrid"] | None = None


class OutputText(msgspec.Struct, kw_only=True):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]]  # {"type": "url_citation", "url", "title", "start_index", "end_index"}


class OutputMessage(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    model: str
    output: list[OutputMessage]
    usage: ResponseUsage | None = None
    incomplete_details: dict[str, str] | None = None
    error: None = None
    citations: list[Citation] = msgspec.field(default_factory=list)
    unsupported_citations: list[int] = msgspec.field(default_factory=list)
    answer_id: str | None = None
