"""Shared pieces of the workbench's pages: rendering a template to HTML, the navigation by role, HTML error
pages (and htmx error fragments), form parsing, and evidence cards."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Template
from markupsafe import Markup

from pubmind.errors import InvalidInput, PubmindError
from pubmind.records import Article
from server.auth import Principal, Role
from server.errors import EXCEPTION_HANDLERS, error_body
from server.ui.render import highlight

# (label, path, least role). Pages are shown in the navigation only to roles that may open them.
NAV: list[tuple[str, str, Role]] = [
    ("Ask", "/ui/ask", "reader"),
    ("My questions", "/ui/my", "reader"),
    ("Curate", "/ui/curate", "curator"),
    ("Corrections", "/ui/curate/corrections", "curator"),
    ("Dashboard", "/ui/dashboard", "curator"),
    ("Models", "/ui/models", "admin"),
    ("Re-tune", "/ui/retune", "admin"),
    ("Keys", "/ui/keys", "admin"),
]


def nav_for(user: Principal | None) -> list[tuple[str, str]]:
    return [(label, path) for label, path, role in NAV if user is not None and user.allows(role)]


def page(name: str, request: Request[Any, Any, Any], status_code: int = 200, **context: Any) -> Template:
    user = request.scope.get("user")
    return Template(template_name=name, status_code=status_code,
                    context={"user": user, "nav": nav_for(user), "path": request.url.path, **context})


def render(request: Request[Any, Any, Any], name: str, **context: Any) -> str:
    """A template rendered to a string (for fragments sent inside a stream)."""
    engine = request.app.template_engine
    assert engine is not None
    return engine.get_template(name).render(request=request, **context)


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return bool(request.headers.get("hx-request"))


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Workbench errors: an error page (or, for htmx and fetch requests, a fragment) with the message, the
    same status and message the API would give."""
    if isinstance(exc, PubmindError):
        status, message = exc.status, exc.message
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
        if status == 404:
            message = f"No page at {request.url.path}"
    else:
        return EXCEPTION_HANDLERS[Exception](request, exc)  # logged, generic 500
    if request.url.path.startswith("/ui/") and request.headers.get("accept", "").startswith("application/json"):
        return Response(error_body(message, status), status_code=status)
    if is_htmx(request) or request.headers.get("x-ui-fetch"):
        return Response(render(request, "_error.html", message=message, status=status), status_code=status,
                        media_type=MediaType.HTML)
    return page("error.html", request, status_code=status, message=message, status=status)


def form_value(form: Mapping[str, Any], name: str, *, max_chars: int, default: str = "") -> str:
    value = form.get(name, default)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text", param=name)
    if len(value) > max_chars:
        raise InvalidInput(f"{name} is {len(value)} characters, the limit is {max_chars}", param=name)
    return value


def form_int(form: Mapping[str, Any], name: str, *, lo: int, hi: int) -> int | None:
    raw = form_value(form, name, max_chars=20).strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, got {raw!r}", param=name) from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi}, got {value}", param=name)
    return value


def split_list(raw: str) -> list[str]:
    """'a; b, c' -> ['a', 'b', 'c'] for journals/MeSH typed into one box (';' or ',' separated)."""
    parts = raw.replace(",", ";").split(";") if ";" in raw or "," in raw else [raw]
    return [p.strip() for p in parts if p.strip()]


def convert(data: Any, kind: type[Any]) -> Any:
    """``msgspec.convert`` with the API's bounds; a bad value is InvalidInput naming the field."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as e:
        path = str(e).rsplit("at `$.", 1)
        param = path[1].rstrip("`") if len(path) == 2 else None
        raise InvalidInput(f"Invalid input: {e}", param=param) from None


def short_authors(article: Article | None, n: int = 3) -> str:
    if article is None or not article.authors:
        return ""
    text = ", ".join(a.display for a in article.authors[:n])
    return text + (" et al." if len(article.authors) > n else "")


def erratum(article: Article | None) -> bool:
    return article is not None and any(c.ref_type == "ErratumIn" for c in article.comments_corrections)


def evidence_cards(evidence: Sequence[Mapping[str, Any]], articles: Mapping[int, Article], terms: Sequence[str],
                   cited: Mapping[int, bool], numbers: Mapping[int, int]) -> list[dict[str, Any]]:
    """View models of evidence cards. ``evidence``: Evidence dicts (pmid, title, journal, year, url, snippet,
    rank, in_prompt); ``cited``: pmid -> supported; ``numbers``: pmid -> citation marker number."""
    cards = []
    for e in evidence:
        pmid = int(e["pmid"])
        art = articles.get(pmid)
        cards.append({
            "pmid": pmid, "rank": e.get("rank"), "title": e.get("title") or (art.title if art else ""),
            "journal": e.get("journal") or (art.journal if art else ""), "year": e.get("year"),
            "authors": short_authors(art), "url": e.get("url") or f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/",
            "doi": art.doi if art else None, "retracted": bool(art and art.retracted), "erratum": erratum(art),
            "passage": highlight(str(e.get("snippet") or ""), terms), "in_prompt": bool(e.get("in_prompt", True)),
            "cited": pmid in cited, "number": numbers.get(pmid),
        })
    return cards


def ago(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def markup(html: str) -> Markup:
    return Markup(html)
