"""Safe HTML for model output and curators' notes: Markdown (markdown-it-py, raw HTML off) with citations turned
into numbered markers, then sanitised with nh3 (ammonia) against an allow-list, so neither an answer nor a note
can inject script. Also query-term highlighting for evidence passages (escaped first, then marked)."""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Collection, Sequence

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

from generation.citations import parse_citations

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
_TAGS = {"p", "br", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "h3", "h4", "h5", "h6",
         "table", "thead", "tbody", "tr", "th", "td", "a", "sup", "span", "hr"}
_ATTRS = {"a": {"href", "class", "title", "data-pmid"}, "span": {"class", "title"}, "sup": {"class"}}
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,}")
STOP = frozenset(str.split("the and for with are was were that this from have has had not but what which who whom does did "
                 "can could would should into than then there their them they its also between among about after "
                 "before during under over more less most least how why when where whether"))


def sanitize(fragment: str) -> str:
    return nh3.clean(fragment, tags=_TAGS, attributes=_ATTRS, url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer")


def markdown(text: str) -> Markup:
    """A note or any user text as sanitised HTML."""
    return Markup(sanitize(_md.render(text or "")))


def citation_numbers(text: str, evidence_pmids: Collection[int]) -> dict[int, int]:
    """PMID -> marker number (1, 2, ... in order of first citation)."""
    order: dict[int, int] = {}
    for c in parse_citations(text, evidence_pmids):
        for p in c.pmids:
            order.setdefault(p, len(order) + 1)
    return order


def answer_html(text: str, evidence_pmids: Collection[int]) -> Markup:
    """An answer as sanitised HTML; each cited PMID becomes a numbered marker linking to its evidence card
    (``#ev-PMID``), and a PMID that was not in the evidence is flagged as unsupported."""
    ev = set(evidence_pmids)
    numbers = citation_numbers(text, ev)
    markers: list[str] = []
    nonce = secrets.token_hex(6)  # placeholders the text cannot forge
    out, pos = [], 0
    for c in parse_citations(text, ev):
        parts = []
        for p in c.pmids:
            n = numbers[p]
            if p in ev:
                parts.append(f'<a class="cite" href="#ev-{p}" data-pmid="{p}" title="PMID {p}">{n}</a>')
            else:
                parts.append(f'<span class="cite unsupported" title="PMID {p} was not in the evidence: '
                             f'unsupported citation">{n}?</span>')
        markers.append("<sup>" + "".join(parts) + "</sup>")
        out += [text[pos:c.start], f"pmcite{nonce}x{len(markers) - 1}x"]
        pos = c.end
    out.append(text[pos:])
    rendered = _md.render("".join(out))
    rendered = re.sub(rf"pmcite{nonce}x(\d+)x", lambda m: markers[int(m.group(1))], rendered)
    return Markup(sanitize(rendered))


def query_terms(question: str) -> list[str]:
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(question) if w.lower() not in STOP))


def highlight(passage: str, terms: Sequence[str]) -> Markup:
    """``passage`` escaped, with whole-word matches of ``terms`` wrapped in ``<mark>``."""
    escaped = html.escape(passage)
    if not terms:
        return Markup(escaped)
    pat = re.compile(r"\b(" + "|".join(re.escape(html.escape(t)) for t in terms) + r")\w*", re.IGNORECASE)
    return Markup(pat.sub(lambda m: f"<mark>{m.group(0)}</mark>", escaped))
