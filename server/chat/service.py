"""``ChatService``: OpenAI-compatible chat completions over the answer pipeline (``server.rag``), whole or as
``chat.completion.chunk`` events, and the model list.

Retrieval runs on the conversation's last user message; earlier user and assistant turns are kept as history;
client system messages are replaced by pubmind's system prompt (the one adapters are trained with)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio

from finetune.registry import AdapterRegistry
from pubmind.errors import InvalidInput, PubmindError
from pubmind.settings import Settings
from server import sse
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
from server.rag import Answered, Prepared, RagService, Sampling, StreamRelay

SAMPLING_FIELDS = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def message_text(msg: ChatMessage, i: int) -> str:
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
            history.append({"role": m.role, "content": message_text(m, i)})
    return message_text(messages[-1], len(messages) - 1), history


def references_text(citations: Any, unsupported: Any) -> str:
    """Readable references appended to chat answers (only PMIDs that were in the evidence)."""
    out = ""
    if citations:
        out += "\n\nReferences:\n" + "\n".join(
            f"[PMID:{c.pmid}] {c.title}" + (f" {c.journal}" if c.journal else "")
            + (f" ({c.year})" if c.year else "") + f". {c.url}" for c in citations)
    if unsupported:
        out += ("\n\nWarning: the answer cites PMIDs that were not in the retrieved evidence; they are not "
                "sources: " + ", ".join(str(p) for p in unsupported))
    return out


def usage(ans: Answered) -> Usage:
    return Usage(prompt_tokens=ans.prompt_tokens, completion_tokens=ans.completion_tokens,
                 total_tokens=ans.prompt_tokens + ans.completion_tokens)


class ChatService:
    def __init__(self, *, settings: Settings, rag: RagService, registry: AdapterRegistry) -> None:
        self.settings, self.rag, self.registry = settings, rag, registry

    def check_conversation(self, messages: list[ChatMessage]) -> None:
        limits = self.settings.server
        if len(messages) > limits.max_messages:
            raise InvalidInput(f"messages has {len(messages)} entries; the limit is {limits.max_messages} "
                               f"(settings.server.max_messages)", param="messages")
        chars = sum(len(message_text(m, i)) for i, m in enumerate(messages))
        if chars > limits.max_conversation_chars:
            raise InvalidInput(f"messages hold {chars} characters; the limit is {limits.max_conversation_chars} "
                               f"(settings.server.max_conversation_chars)", param="messages")

    async def prepare(self, req: ChatCompletionRequest) -> tuple[Prepared, Sampling]:
        if req.n != 1:
            raise InvalidInput(f"n must be 1 (one answer per request), got {req.n}", param="n")
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise InvalidInput("give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
        self.check_conversation(req.messages)
        question, history = split_conversation(req.messages)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        self.rag.check_max_tokens(max_tokens, "max_completion_tokens" if req.max_completion_tokens is not None
                                  else "max_tokens")
        prep = await self.rag.prepare(question, k=req.k, mode=req.retrieval, model=req.model,
                                      filters=req.filters.to_filters() if req.filters else None,
                                      max_tokens=max_tokens, history=history)
        extra = {f: getattr(req, f) for f in SAMPLING_FIELDS if getattr(req, f) is not None}
        return prep, Sampling(temperature=req.temperature, extra=extra)

    async def complete(self, req: ChatCompletionRequest) -> ChatCompletionResponse:
        prep, sampling = await self.prepare(req)
        ans = await self.rag.generate(prep, sampling)
        text = ans.text + references_text(ans.citations, ans.unsupported)
        return ChatCompletionResponse(
            id=f"chatcmpl-{ans.id}", created=int(time.time()), model=req.model,
            choices=[Choice(message=AssistantMessage(content=text), finish_reason=ans.finish_reason)],
            usage=usage(ans), citations=ans.citations, unsupported_citations=ans.unsupported, answer_id=ans.id,
            index_version=prep.index_version)

    async def chunks(self, req: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """``data:`` chunks: the role, text deltas, a final chunk with the references, citations and finish
        reason, the usage chunk when ``stream_options.include_usage``, then ``[DONE]``."""
        prep, sampling = await self.prepare(req)
        relay = await StreamRelay.start(self.rag, prep, sampling)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(choices: list[ChunkChoice], **kw: Any) -> bytes:
            return sse.data(ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created,
                                                model=req.model, choices=choices, **kw))

        async def events() -> AsyncIterator[bytes]:
            yield chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])
            try:
                async for text in relay.texts():
                    yield chunk([ChunkChoice(delta=Delta(content=text))])
                ans = await relay.finish()
            except PubmindError as e:
                yield sse.data(sse.error_payload(e))
                yield sse.DONE
                return
            refs = references_text(ans.citations, ans.unsupported)
            yield chunk([ChunkChoice(delta=Delta(content=refs) if refs else Delta(),
                                     finish_reason=ans.finish_reason or "stop")],
                        citations=ans.citations, unsupported_citations=ans.unsupported, answer_id=ans.id)
            if include_usage:
                yield chunk([], usage=usage(ans))
            yield sse.DONE

        return events()

    def _cards(self) -> list[ModelCard]:
        now = int(time.time())
        out = [ModelCard(id=self.rag.base_name, created=now, root=self.settings.llm.model)]
        for name in self.registry.names():
            versions = self.registry.versions(name)
            cur = next((v for v in versions if v.current), None)
            if cur is not None:
                out.append(ModelCard(id=name, created=now, root=cur.lora_name))
            out += [ModelCard(id=v.lora_name, created=int(v.manifest.get("created_at", now)), root=v.lora_name)
                    for v in versions]
        return out

    async def models(self) -> ModelList:
        return ModelList(data=await anyio.to_thread.run_sync(self._cards))
