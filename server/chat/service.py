"""``ChatService``: OpenAI-compatible chat completions over the answer pipeline (``server.rag``), whole or as
``chat.completion.chunk`` events, and the model list.

Retrieval runs on the conversation's last user message; earlier user and assistant turns are kept as history;
client system messages are replaced by pubmind's system prompt (the one adapters are trained with). A model
named ``NAME:plain`` (``base:plain``, ``pubmedqa:plain``) is plain chat through the same model or adapter: the
client's messages as they are, no retrieval, no evidence (for chat UIs' titles, tags and follow-ups).
The answer is shown as ``server.chat.render`` describes, identically whole or streamed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from finetune.registry import AdapterRegistry
from pubmind.errors import InvalidInput, PubmindError
from pubmind.settings import Settings
from server import sse
from server.chat.protocol import (
    SAMPLING_FIELDS,
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ModelCard,
    ModelList,
    Usage,
)
from server.chat.render import StreamLinker, after_answer, link_pmids, url_citations
from server.query.protocol import Evidence
from server.rag import Answered, Prepared, RagService, Sampling, StreamRelay

log = logging.getLogger("pubmind.server")

PLAIN = ":plain"
KNOWN_FIELDS = frozenset(f.name for f in msgspec.structs.fields(ChatCompletionRequest))
MAX_UNKNOWN_LOGGED = 1000  # names remembered for log-once (clients choose them: the set must stay bounded)
_unknown_seen: set[str] = set()
_unknown_lock = threading.Lock()


def note_unknown_fields(names: Iterable[str]) -> list[str]:
    """Request fields outside the schema: ignored (chat UIs add their own), each logged once per process."""
    unknown = sorted(set(names) - KNOWN_FIELDS)
    with _unknown_lock:
        new = [n for n in unknown if n not in _unknown_seen][:max(0, MAX_UNKNOWN_LOGGED - len(_unknown_seen))]
        _unknown_seen.update(new)
    for name in new:
        log.warning("/v1/chat/completions: ignoring unknown request field %r (logged once)", name[:100])
    return unknown


def check_tools(req: ChatCompletionRequest) -> None:
    """pubmind answers in text and never calls a tool: fine unless the request requires a tool call."""
    if req.tool_choice == "required" or isinstance(req.tool_choice, dict):
        raise InvalidInput(f"tool_choice={req.tool_choice!r} requires a tool call; pubmind answers in text and "
                           f"never calls tools (use 'auto' or 'none', or leave tool_choice out)", param="tool_choice")
    if isinstance(req.function_call, dict):
        raise InvalidInput("function_call names a function to call; pubmind answers in text and never calls "
                           "functions (use 'auto' or 'none', or leave function_call out)", param="function_call")


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
    """(last user message, earlier user/assistant turns). System, developer, tool and function messages are
    left out (pubmind's system prompt is used; pubmind never calls tools)."""
    if not messages:
        raise InvalidInput("messages must contain at least one user message", param="messages")
    if messages[-1].role != "user":
        raise InvalidInput(f"the last message must have role 'user', got {messages[-1].role!r}", param="messages")
    history = [{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(messages[:-1])
               if m.role in ("user", "assistant")]
    return message_text(messages[-1], len(messages) - 1), history


def plain_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The client's messages for plain chat: system (developer as system), user and assistant turns."""
    if not any(m.role == "user" for m in messages):
        raise InvalidInput("messages must contain at least one user message", param="messages")
    return [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, i)}
            for i, m in enumerate(messages) if m.role in ("system", "developer", "user", "assistant")]


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

    async def prepare(self, req: ChatCompletionRequest, requester: str | None = None) -> tuple[Prepared, Sampling]:
        """``requester``: the asking key's id, kept with the stored answer."""
        if req.n not in (None, 1):
            raise InvalidInput(f"n must be 1 (one answer per request), got {req.n}", param="n")
        check_tools(req)
        self.check_conversation(req.messages)
        max_tokens = self.rag.cap_max_tokens(
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens)
        extra = {f: getattr(req, f) for f in SAMPLING_FIELDS if getattr(req, f) is not None}
        if req.response_format is not None:
            extra["response_format"] = req.response_format.to_vllm()
        sampling = Sampling(temperature=req.temperature, extra=extra)
        if req.model.endswith(PLAIN):
            prep = await self.rag.prepare_plain(plain_messages(req.messages), model=req.model[:-len(PLAIN)],
                                                max_tokens=max_tokens)
            return prep, sampling
        question, history = split_conversation(req.messages)
        prep = await self.rag.prepare(question, k=req.k, mode=req.retrieval, model=req.model,
                                      filters=req.filters.to_filters() if req.filters else None,
                                      max_tokens=max_tokens, history=history, requester=requester)
        return prep, sampling

    def consulted(self, prep: Prepared) -> list[Evidence]:
        return [e for e in prep.evidence if e.in_prompt] if self.settings.server.evidence_consulted else []

    def tail(self, prep: Prepared, ans: Answered) -> str:
        return "" if prep.plain else after_answer(ans.citations, ans.unsupported, self.consulted(prep))

    def annotate(self, prep: Prepared, content: str, answer_end: int) -> list[dict[str, Any]]:
        return url_citations(content, {int(h.pmid): h.title for h in prep.hits}, end=answer_end)

    async def complete(self, req: ChatCompletionRequest, *, requester: str | None = None) -> ChatCompletionResponse:
        prep, sampling = await self.prepare(req, requester)
        ans = await self.rag.generate(prep, sampling)
        text = ans.text if prep.plain else link_pmids(ans.text, set(prep.in_prompt))
        content = text + self.tail(prep, ans)
        message = AssistantMessage(content=content, annotations=self.annotate(prep, content, len(text)))
        return ChatCompletionResponse(
            id=f"chatcmpl-{ans.id}", created=int(time.time()), model=req.model,
            choices=[Choice(message=message, finish_reason=ans.finish_reason or "stop", logprobs=ans.logprobs)],
            usage=usage(ans), citations=ans.citations, unsupported_citations=ans.unsupported,
            answer_id=None if prep.plain else ans.id, index_version=prep.index_version)

    async def chunks(self, req: ChatCompletionRequest, *, requester: str | None = None) -> AsyncIterator[bytes]:
        """``data:`` chunks as OpenAI sends them: the role, content deltas, a final chunk with the rest of the
        content (references, evidence consulted), its annotations, citations and finish reason, the usage chunk
        when ``stream_options.include_usage`` (then every other chunk has ``"usage": null``), ``[DONE]``."""
        prep, sampling = await self.prepare(req, requester)
        rendered = await RenderedStream.start(self, prep, sampling)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                 "logprobs": None}]
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": choices, **({"usage": None} if with_usage else {}), **extra}
            return sse.data(body)

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for text in rendered.deltas():
                    yield chunk({"content": text})
                end = await rendered.finish()
            except PubmindError as e:
                await rendered.relay.abandon("error")
                yield sse.data(sse.error_payload(e))
                yield sse.DONE
                return
            finally:
                await rendered.relay.abandon("client_disconnected")  # a no-op once finished
            ans = end.answered
            yield chunk({"content": end.last, "annotations": end.annotations} if end.last or end.annotations else {},
                        ans.finish_reason or "stop", citations=ans.citations, unsupported_citations=ans.unsupported,
                        answer_id=None if prep.plain else ans.id)
            if with_usage:
                yield chunk(None, usage=usage(ans))
            yield sse.DONE

        return events()

    def _cards(self) -> list[ModelCard]:
        now = int(time.time())
        base = self.rag.base_name
        out = [ModelCard(id=base, created=now, root=self.settings.llm.model),
               ModelCard(id=base + PLAIN, created=now, root=self.settings.llm.model)]
        for name in self.registry.names():
            versions = self.registry.versions(name)
            served = self.registry.promoted_versions(name)
            cur = next((v for v in versions if v.current), None)
            if cur is not None:
                out += [ModelCard(id=name, created=now, root=cur.lora_name),
                        ModelCard(id=name + PLAIN, created=now, root=cur.lora_name)]
            out += [ModelCard(id=v.lora_name, created=int(v.manifest.get("created_at", now)), root=v.lora_name)
                    for v in versions if v.version in served]
        return out

    async def models(self) -> ModelList:
        return ModelList(data=await anyio.to_thread.run_sync(self._cards))


@dataclass
class StreamEnd:
    answered: Answered
    last: str  # content not sent as a delta yet: the held-back end of the answer, then what follows it
    content: str  # the whole content, as a non-streamed answer has it
    annotations: list[dict[str, Any]]


class RenderedStream:
    """A streamed answer rendered as ``ChatService.complete`` renders it whole: ``deltas()`` gives the linked
    answer text piece by piece; ``finish()`` verifies and records it and gives the rest (``StreamEnd``)."""

    def __init__(self, chat: ChatService, prep: Prepared, relay: StreamRelay) -> None:
        self.chat, self.prep, self.relay = chat, prep, relay
        self.linker = StreamLinker(prep.in_prompt) if not prep.plain else None

    @classmethod
    async def start(cls, chat: ChatService, prep: Prepared, sampling: Sampling) -> RenderedStream:
        return cls(chat, prep, await StreamRelay.start(chat.rag, prep, sampling))

    async def deltas(self) -> AsyncIterator[str]:
        async for text in self.relay.texts():
            out = self.linker.feed(text) if self.linker else text
            if out:
                yield out

    async def finish(self) -> StreamEnd:
        ans = await self.relay.finish()
        rest = self.linker.close() if self.linker else ""
        text = self.linker.sent if self.linker else "".join(self.relay.parts)
        tail = self.chat.tail(self.prep, ans)
        return StreamEnd(answered=ans, last=rest + tail, content=text + tail,
                         annotations=self.chat.annotate(self.prep, text + tail, len(text)))
