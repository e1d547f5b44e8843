"""``ResponsesService``: ``/v1/responses`` (OpenAI's Responses API, plain text) as a translation onto the chat
service, so an answer is retrieved, generated, verified, linked and annotated exactly as a chat answer is."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pubmind.errors import InvalidInput, PubmindError
from server import sse
from server.chat.protocol import ChatCompletionRequest, ChatMessage, ContentPart
from server.chat.service import ChatService, RenderedStream
from server.query.protocol import Citation
from server.responses.protocol import (
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
)


def flat(annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat's ``{"type", "url_citation": {...}}`` -> the Responses API's flat ``{"type", "url", ...}``."""
    return [{"type": a["type"], **a["url_citation"]} for a in annotations]


def to_chat(req: ResponseRequest) -> ChatCompletionRequest:
    if req.previous_response_id is not None:
        raise InvalidInput("previous_response_id is not supported: pubmind keeps no conversation state; send the "
                           "earlier turns in input", param="previous_response_id")
    if req.background:
        raise InvalidInput("background responses are not supported; leave background out", param="background")
    messages = [ChatMessage(role="system", content=req.instructions)] if req.instructions else []
    if isinstance(req.input, str):
        messages.append(ChatMessage(role="user", content=req.input))
    else:
        for m in req.input:
            content = m.content if isinstance(m.content, str) else [
                ContentPart(type="text" if p.type in ("input_text", "output_text") else p.type, text=p.text)
                for p in m.content]
            messages.append(ChatMessage(role=m.role, content=content))
    return ChatCompletionRequest(model=req.model, messages=messages, max_completion_tokens=req.max_output_tokens,
                                 temperature=req.temperature, top_p=req.top_p, tools=req.tools,
                                 tool_choice=req.tool_choice, k=req.k, filters=req.filters, retrieval=req.retrieval)


def response_object(rid: str, mid: str, model: str, text: str, annotations: list[dict[str, Any]], *,
                    finish_reason: str | None, tokens: tuple[int, int], citations: list[Citation],
                    unsupported: list[int], answer_id: str | None) -> ResponseObject:
    """A finished response; ``tokens`` = (input, output)."""
    status: Literal["completed", "incomplete"] = "incomplete" if finish_reason == "length" else "completed"
    return ResponseObject(
        id=rid, created_at=int(time.time()), status=status, model=model,
        output=[OutputMessage(id=mid, status=status, content=[OutputText(text=text, annotations=flat(annotations))])],
        usage=ResponseUsage(input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens)),
        incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
        citations=citations, unsupported_citations=unsupported, answer_id=answer_id)


class ResponsesService:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def create(self, req: ResponseRequest, *, requester: str | None = None) -> ResponseObject:
        out = await self.chat.complete(to_chat(req), requester=requester)
        message, u = out.choices[0].message, out.usage
        return response_object(f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", req.model, message.content,
                               message.annotations, finish_reason=out.choices[0].finish_reason,
                               tokens=(u.prompt_tokens, u.completion_tokens), citations=out.citations,
                               unsupported=out.unsupported_citations, answer_id=out.answer_id)

    async def events(self, req: ResponseRequest, *, requester: str | None = None) -> AsyncIterator[bytes]:
        """``response.created``, ``response.output_item.added``, ``response.content_part.added``,
        ``response.output_text.delta``..., ``response.output_text.done``, ``response.content_part.done``,
        ``response.output_item.done``, ``response.completed`` (``error`` if generation fails midway)."""
        prep, sampling = await self.chat.prepare(to_chat(req), requester)
        rendered = await RenderedStream.start(self.chat, prep, sampling)
        rid, mid, seq = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", iter(range(1 << 62))
        pending = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
                   "model": req.model, "output": []}
        where = {"item_id": mid, "output_index": 0, "content_index": 0}

        def ev(kind: str, **data: Any) -> bytes:
            return sse.event(kind, {"type": kind, "sequence_number": next(seq), **data})

        async def stream() -> AsyncIterator[bytes]:
            yield ev("response.created", response=pending)
            yield ev("response.output_item.added", output_index=0, item={
                "id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
            yield ev("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
            try:
                async for text in rendered.deltas():
                    yield ev("response.output_text.delta", **where, delta=text, logprobs=[])
                end = await rendered.finish()
            except PubmindError as e:
                await rendered.relay.abandon("error")
                yield ev("error", code=e.code or "server_error", message=e.message, param=e.param)
                return
            finally:
                await rendered.relay.abandon("client_disconnected")  # a no-op once finished
            if end.last:
                yield ev("response.output_text.delta", **where, delta=end.last, logprobs=[])
            ans = end.answered
            final = response_object(rid, mid, req.model, end.content, end.annotations, finish_reason=ans.finish_reason,
                                    tokens=(ans.prompt_tokens, ans.completion_tokens), citations=ans.citations,
                                    unsupported=ans.unsupported, answer_id=None if prep.plain else ans.id)
            part = final.output[0].content[0]
            yield ev("response.output_text.done", **where, text=end.content, logprobs=[])
            yield ev("response.content_part.done", **where, part=part)
            yield ev("response.output_item.done", output_index=0, item=final.output[0])
            yield ev("response.completed" if final.status == "completed" else "response.incomplete", response=final)

        return stream()
