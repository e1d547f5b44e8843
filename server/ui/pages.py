"""Sign-in/out and the reader's pages: Ask (the answer streamed through the query service's SSE), an answer
with its evidence (rating it), and My questions."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Stream, Template

from finetune.ratings import RatingStore
from finetune.store import AnswerStore
from pubmind.errors import Forbidden, InvalidInput
from retrieval.store import CorpusStore
from server import sse
from server.adapters.protocol import AdapterList
from server.adapters.service import AdapterService
from server.auth import KeyStore, Principal, require_role
from server.index_holder import IndexHolder
from server.query.protocol import QueryRequest
from server.query.service import QueryService
from server.ratelimit import RateLimiter
from server.ui.facets import FacetCache
from server.ui.render import answer_html, citation_numbers, query_terms
from server.ui.session import Sessions
from server.ui.views import convert, evidence_cards, form_int, form_value, page, render, split_list

UiRequest = Request[Principal, Any, Any]
_dec = msgspec.json.Decoder()


def _safe_next(target: str) -> str:
    """Only a local workbench path (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "//" in parts.path:
        return "/ui/ask"
    return parts.path + (f"?{parts.query}" if parts.query else "")


@get("/", include_in_schema=False)
async def home() -> Redirect:
    return Redirect("/ui/ask")


@get("/login", include_in_schema=False)
async def login_page(request: UiRequest, next: FromQuery[str] = "/ui/ask") -> Template:
    return page("login.html", request, next=_safe_next(next), error=None)


@post("/login", include_in_schema=False, status_code=303)
async def login(request: UiRequest, key_store: NamedDependency[KeyStore | None],
                ui_sessions: NamedDependency[Sessions], limiter: NamedDependency[RateLimiter]) -> Response[Any]:
    form = await request.form()
    target = _safe_next(form_value(form, "next", max_chars=500, default="/ui/ask"))
    limiter.check(f"ui-login:{request.client.host if request.client else '?'}")
    key = form_value(form, "key", max_chars=200).strip()
    if key_store is None:  # auth off: everyone is the anonymous admin
        return Redirect(target, status_code=303)
    principal = key_store.authenticate(key) if key else None
    if principal is None:
        return page("login.html", request, status_code=401, next=target,
                    error="That API key is not valid (or was revoked).")
    resp = Redirect(target, status_code=303)
    resp.cookies.append(ui_sessions.cookie(principal, key[:8]))
    return resp


@post("/logout", include_in_schema=False, status_code=303)
async def logout(ui_sessions: NamedDependency[Sessions]) -> Redirect:
    resp = Redirect("/ui/login", status_code=303)
    resp.cookies.append(ui_sessions.clear())
    return resp


async def _models(adapter_service: AdapterService) -> list[tuple[str, str]]:
    """(value, label) of the model picker: base, each adapter's current version, and every version."""
    listing = await adapter_service.list(detail=False)
    assert isinstance(listing, AdapterList)
    out = [("base", "base model")]
    for a in listing.data:
        if a.current_lora_name:
            out.append((a.name, f"{a.name} (current: {a.current_lora_name})"))
        out += [(v.lora_name, v.lora_name) for v in reversed(a.versions) if not v.current]
    return out


@get("/ask", include_in_schema=False, guards=[require_role("reader")])
async def ask_page(request: UiRequest, adapter_service: NamedDependency[AdapterService],
                   ui_facets: NamedDependency[FacetCache], index: NamedDependency[IndexHolder]) -> Template:
    facets = await anyio.to_thread.run_sync(ui_facets.get, index.status().version)
    return page("ask.html", request, models=await _models(adapter_service), facets=facets)


def query_request(form: Any, max_chars: int) -> QueryRequest:
    """The Ask form as the API's QueryRequest (the same bounds; a bad field is a 400 naming it)."""
    filters: dict[str, Any] = {
        "year_from": form_int(form, "year_from", lo=0, hi=9999), "year_to": form_int(form, "year_to", lo=0, hi=9999),
        "journals": split_list(form_value(form, "journals", max_chars=5000)),
        "mesh": split_list(form_value(form, "mesh", max_chars=5000)),
        "publication_types": [v for v in form.getall("publication_types", []) if v],
        "languages": [v for v in form.getall("languages", []) if v],
        "exclude_retracted": form.get("exclude_retracted") == "on",
    }
    question = form_value(form, "question", max_chars=max_chars).strip()
    if not question:
        raise InvalidInput("question is empty: type a question", param="question")
    return convert({"question": question, "model": form_value(form, "model", max_chars=200) or "base",
                    "stream": True, "filters": filters}, QueryRequest)


def _parse(chunk: bytes) -> tuple[str, Any]:
    head, _, data = chunk.partition(b"\ndata: ")
    return head.removeprefix(b"event: ").decode(), _dec.decode(data)


@post("/ask/stream", include_in_schema=False, guards=[require_role("reader")], status_code=200)
async def ask_stream(request: UiRequest, query_service: NamedDependency[QueryService],
                     ui_ratings: NamedDependency[RatingStore], corpus: NamedDependency[CorpusStore]) -> Stream:
    """The query service's events (evidence, delta..., citations, done | error) passed through, plus the
    server-rendered, sanitised HTML: ``cards`` after the evidence and ``answer`` once citations are checked."""
    form = await request.form()
    req = query_request(form, request.app.state["settings"].server.max_question_chars)
    events = await query_service.answer_events(req, requester=request.user.key_id)
    user = request.user
    terms = query_terms(req.question)

    async def relay() -> Any:
        evidence: list[dict[str, Any]] = []
        articles: dict[int, Any] = {}
        served = "base model"
        async for chunk in events:
            yield chunk
            name, data = _parse(chunk)
            if name == "evidence":
                evidence, served = data["evidence"], data.get("adapter") or "base model"
                articles = await anyio.to_thread.run_sync(corpus.get_many, [int(e["pmid"]) for e in evidence])
                cards = evidence_cards(evidence, articles, terms, {}, {})
                yield sse.event("cards", {"html": render(request, "_cards.html", cards=cards)})
            elif name == "citations":
                await anyio.to_thread.run_sync(ui_ratings.record_ask, data["id"], user.name, req.question,
                                               req.model, evidence)
                pmids = [int(e["pmid"]) for e in evidence if e.get("in_prompt", True)]
                numbers = citation_numbers(data["answer"], pmids)
                cited = {p: p in pmids for p in numbers}
                cards = evidence_cards(evidence, articles, terms, cited, numbers)
                yield sse.event("answer", {"html": render(
                    request, "_answer.html", answer_id=data["id"], answer=answer_html(data["answer"], pmids),
                    unsupported=data["unsupported_citations"], cards=cards, rating=None, streamed=True,
                    user=user, served=served)})

    return sse.stream(relay())


def _can_see(user: Principal, ask_by: str | None) -> bool:
    return user.allows("curator") or ask_by == user.name


@get("/answers/{answer_id:str}", include_in_schema=False, guards=[require_role("reader")])
async def answer_page(request: UiRequest, answer_id: FromPath[str], answers: NamedDependency[AnswerStore],
                      ui_ratings: NamedDependency[RatingStore], corpus: NamedDependency[CorpusStore]) -> Template:
    """One answer with its evidence; readers see only their own, curators every answer (with provenance)."""
    ask = await anyio.to_thread.run_sync(ui_ratings.ask, answer_id)
    if not _can_see(request.user, ask.asked_by if ask else None):
        raise Forbidden(f"answer {answer_id!r} was not asked by {request.user.name!r}; only curators see "
                        f"other people's answers", param="answer_id")
    ans = await anyio.to_thread.run_sync(answers.get, answer_id)
    if ask is not None:
        evidence = ask.evidence
    else:  # asked through the API: rebuild the cards from the corpus
        evidence = [{"pmid": p, "rank": i + 1, "in_prompt": True} for i, (p, _) in enumerate(ans.retrieved)]
    articles = await anyio.to_thread.run_sync(corpus.get_many, [int(e["pmid"]) for e in evidence])
    for e in evidence:
        art = articles.get(int(e["pmid"]))
        if art is not None and not e.get("snippet"):
            e.update(title=art.title, journal=art.journal, year=art.year, url=art.url,
                     snippet=art.abstract_text[:600])
    in_prompt = [int(e["pmid"]) for e in evidence if e.get("in_prompt", True)]
    numbers = citation_numbers(ans.answer, in_prompt)
    cited = {int(c["pmid"]): bool(c.get("supported")) for c in ans.citations}
    cards = evidence_cards(evidence, articles, query_terms(ans.question), cited, numbers)
    mine = [r for r in await anyio.to_thread.run_sync(ui_ratings.ratings, answer_id) if r.rater == request.user.name]
    unsupported = [int(c["pmid"]) for c in ans.citations if not c.get("supported")]
    return page("answer.html", request, ans=ans, answer=answer_html(ans.answer, in_prompt), cards=cards,
                unsupported=unsupported, answer_id=answer_id, rating=mine[0] if mine else None, ask=ask,
                served=ans.adapter_version or "base model")


@post("/answers/{answer_id:str}/rate", include_in_schema=False, guards=[require_role("reader")], status_code=200)
async def rate(request: UiRequest, answer_id: FromPath[str], ui_ratings: NamedDependency[RatingStore]) -> Response[str]:
    form = await request.form()
    value = {"up": 1, "down": -1}.get(form_value(form, "rating", max_chars=10), 0)
    if value == 0:
        raise InvalidInput(f"rating must be 'up' or 'down', got {form.get('rating')!r}", param="rating")
    ask = await anyio.to_thread.run_sync(ui_ratings.ask, answer_id)
    if not _can_see(request.user, ask.asked_by if ask else None):
        raise Forbidden(f"answer {answer_id!r} was not asked by {request.user.name!r}", param="answer_id")
    comment = form_value(form, "comment", max_chars=5000)
    r = await anyio.to_thread.run_sync(ui_ratings.rate, answer_id, request.user.name, value, comment)
    return Response(render(request, "_rating.html", answer_id=answer_id, rating=r), media_type=MediaType.HTML)


@get("/my", include_in_schema=False, guards=[require_role("reader")])
async def my_questions(request: UiRequest, ui_ratings: NamedDependency[RatingStore]) -> Template:
    asks = await anyio.to_thread.run_sync(ui_ratings.asks_by, request.user.name)
    return page("my.html", request, asks=asks)


HANDLERS = [home, login_page, login, logout, ask_page, ask_stream, answer_page, rate, my_questions]
