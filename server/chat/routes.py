"""``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI-compatible, so chat UIs and the official
``openai`` client work unchanged. The ``model`` field picks the base model or an adapter (``NAME``,
``NAME@vN``)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from server import sse
from server.auth import Principal, require_role
from server.chat.protocol import ChatCompletionRequest, ChatCompletionResponse, ModelList
from server.chat.service import ChatService, note_unknown_fields


@post("/chat/completions", status_code=200, summary="OpenAI-compatible chat completion with cited evidence",
      description="Accepts every field of OpenAI's request; sampling fields go to vLLM, fields outside the schema "
      "are ignored (logged once). Model 'NAME:plain' is plain chat without retrieval (chat UIs' background tasks).")
async def chat_completions(request: Request[Principal, Any, Any], data: JSONBody[ChatCompletionRequest],
                           chat_service: NamedDependency[ChatService]) -> ChatCompletionResponse | Stream:
    note_unknown_fields(await request.json())
    if data.stream:
        return sse.stream(await chat_service.chunks(data, requester=request.user.key_id))
    return await chat_service.complete(data, requester=request.user.key_id)


@get("/models", summary="Models: the base model, every adapter (its current version) and every NAME@vN")
async def list_models(chat_service: NamedDependency[ChatService]) -> ModelList:
    return await chat_service.models()


router = Router("/v1", route_handlers=[chat_completions, list_models], guards=[require_role("reader")],
                tags=["openai"])
