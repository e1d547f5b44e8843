"""``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI-compatible, so chat UIs and the official
``openai`` client work unchanged. Retrieval runs on the conversation's last user message; earlier user and
assistant turns are kept as history; client system messages are replaced by pubmind's system prompt (the one
adapters are trained with). The ``model`` field picks the base model or an adapter (``NAME``, ``NAME@vN``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from litestar import Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from pubmind.errors import InvalidInput, PubmindError
from server.auth import require_role
from server.chat.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    Usage,
)
from server.errors import error_body
from server.query.protocol import SSE_HEADERS
from server.rag import RagService, StreamRelay, primed, references_text
from server.resources import Resources

_enc = msgspec.json.Encoder()


def _text(msg: ChatMessage, i: int) -> str:
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    parts = []
    for j, p in enumerate(msg.content):
        if p.type != "text" or p.text is None:
            raise InvalidInput(f"messages[{i}].content[{j}] has type {p.type!r}; only 'text' parts are supported",
                               param=f"messages[{i}].content")
        parts.append(p.text)
    return "\n".join(parts)


def split_conversation(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """(last user message, earlier user/assistant turns). System/developer messages are dropped (pubmind's
    system prompt is used); tool messages are rejected."""
    if not messages:
        raise InvalidInput("messages must contain at least one user message", param="messages")
    if messages[-1].role != "user":
        raise InvalidInput(f"the last message must have role 'user', got {messages[-1].role!r}", param="messages")
    history: list[dict[str, str]] = []
    for i, m in enumerate(messages[:-1]):
        if m.role == "tool":
            raise InvalidInput(f"messages[{i}] has role 'tool'; tools are not supported", param="messages")
        if m.role in ("user", "assistant"):
            history.append({"role": m.role, "content": _text(m, i)})
    return _text(messages[-1], len(messages) - 1), history


def _sampling(data: ChatCompletionRequest) -> dict[str, Any]:
    fields = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
    return {f: getattr(data, f) for f in fields if getattr(data, f) is not None}


def _chunk_bytes(chunk: Any) -> bytes:
    return b"data: " + _enc.encode(chunk) + b"\n\n"


@post("/chat/completions", status_code=200, summary="OpenAI-compatible chat completion with cited evidence")
async def chat_completions(data: JSONBody[ChatCompletionRequest],
                           rag: NamedDependency[RagService]) -> ChatCompletionResponse | Stream:
    if data.n != 1:
        raise InvalidInput(f"n must be 1 (one answer per request), got {data.n}", param="n")
    if data.max_tokens is not None and data.max_completion_tokens is not None:
        raise InvalidInput("give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
    question, history = split_conversation(data.messages)
    max_tokens = data.max_completion_tokens if data.max_completion_tokens is not None else data.max_tokens
    rag.check_max_tokens(max_tokens, "max_completion_tokens" if data.max_completion_tokens is not None
                         else "max_tokens")
    prep = await rag.prepare(question, k=data.k, mode=data.retrieval,
                             filters=data.filters.to_filters() if data.filters else None, model=data.model,
                             max_tokens=max_tokens, history=history)
    created = int(time.time())
    extra = _sampling(data)
    if not data.stream:
        ans = await rag.generate(prep, temperature=data.temperature, extra=extra)
        return ChatCompletionResponse(
            id=f"chatcmpl-{ans.id}", created=created, model=data.model,
            choices=[Choice(message=AssistantMessage(content=ans.text + references_text(ans.citations,
                                                                                       ans.unsupported)),
                            finish_reason=ans.finish_reason)],
            usage=Usage(prompt_tokens=ans.prompt_tokens, completion_tokens=ans.completion_tokens,
                        total_tokens=ans.prompt_tokens + ans.completion_tokens),
            citations=ans.citations, unsupported_citations=ans.unsupported, answer_id=ans.id,
            index_version=prep.index_version)

    cid = f"chatcmpl-{uuid.uuid4().hex}"
    include_usage = bool(data.stream_options and data.stream_options.include_usage)

    def chunk(delta: Delta, finish: str | None = None, **kw: Any) -> bytes:
        return _chunk_bytes(ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created, model=data.model,
                                                choices=[ChunkChoice(delta=delta, finish_reason=finish)], **kw))

    t_gen = time.perf_counter()
    relay = StreamRelay(rag, prep, await primed(rag.stream(prep, temperature=data.temperature, extra=extra)), t_gen)

    async def events() -> AsyncIterator[bytes]:
        yield chunk(Delta(role="assistant", content=""))
        try:
            async for text in relay.texts():
                yield chunk(Delta(content=text))
            ans = await relay.finish()
        except PubmindError as e:
            yield b"data: " + _enc.encode(error_body(e.message, e.status, param=e.param, code=e.code)) + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        refs = references_text(ans.citations, ans.unsupported)
        yield chunk(Delta(content=refs) if refs else Delta(), ans.finish_reason or "stop", citations=ans.citations,
                    unsupported_citations=ans.unsupported, answer_id=ans.id)
        if include_usage:
            yield _chunk_bytes(ChatCompletionChunk(
                id=cid, object="chat.completion.chunk", created=created, model=data.model, choices=[],
                usage=Usage(prompt_tokens=ans.prompt_tokens, completion_tokens=ans.completion_tokens,
                            total_tokens=ans.prompt_tokens + ans.completion_tokens)))
        yield b"data: [DONE]\n\n"

    return Stream(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@get("/models", summary="Models: the base model, every adapter (its current version) and every NAME@vN")
async def list_models(resources: NamedDependency[Resources]) -> ModelList:
    rag = resources.rag
    assert rag is not None
    now = int(time.time())

    def cards() -> list[ModelCard]:
        out = [ModelCard(id=rag.base_name, created=now, root=resources.settings.llm.model)]
        reg = resources.registry
        for name in reg.names():
            versions = reg.versions(name)
            cur = next((v for v in versions if v.current), None)
            if cur is not None:
                out.append(ModelCard(id=name, created=now, root=cur.lora_name))
            out += [ModelCard(id=v.lora_name, created=int(v.manifest.get("created_at", now)), root=v.lora_name)
                    for v in versions]
        return out

    return ModelList(data=await anyio.to_thread.run_sync(cards))


router = Router("/v1", route_handlers=[chat_completions, list_models], guards=[require_role("reader")],
                tags=["openai"])
