"""How a verified answer is shown to chat UIs, the same whole or streamed:

* each cited PMID that was in the evidence becomes a Markdown link ``[PMID:123](https://pubmed.ncbi.nlm.nih.gov/123/)``
  (a PMID outside the evidence stays plain ``[PMID:n]`` and is flagged after the answer, never linked);
* OpenAI ``url_citation`` annotations give each link's url, title and [start, end) character span in the content;
* after the answer: the references of the cited PMIDs, "Evidence consulted" (the retrieved articles that were in
  the prompt; ``server.evidence_consulted``) and the warning about unsupported citations.

``StreamLinker`` applies the links to a stream: it holds back a tail that could still be (or extend) a citation,
so the concatenated deltas equal ``link_pmids`` of the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from generation.citations import parse_citations
from server.query.protocol import Citation, Evidence


def pubmed_url(pmid: int) -> str:
    return f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/"


def link_pmids(text: str, evidence: Collection[int]) -> str:
    """Every citation group rewritten: evidence PMIDs as Markdown links, others as plain ``[PMID:n]``."""
    out, pos = [], 0
    for c in parse_citations(text, evidence):
        keys = [f"[PMID:{p}]({pubmed_url(p)})" if p in evidence else f"[PMID:{p}]" for p in c.pmids]
        out += [text[pos:c.start], ", ".join(keys)]
        pos = c.end
    out.append(text[pos:])
    return "".join(out)


_LINK = re.compile(r"\[PMID:(\d+)\]\((https://pubmed\.ncbi\.nlm\.nih\.gov/\d+/)\)")


def url_citations(content: str, titles: Mapping[int, str], end: int | None = None) -> list[dict[str, Any]]:
    """OpenAI ``url_citation`` annotations for the PMID links in ``content[:end]`` (the answer, not the lists
    after it)."""
    return [{"type": "url_citation", "url_citation": {
                "url": m.group(2), "title": titles.get(int(m.group(1)), f"PMID {m.group(1)}"),
                "start_index": m.start(), "end_index": m.end()}}
            for m in _LINK.finditer(content, 0, len(content) if end is None else end)]


def _article(c: Citation) -> str:
    where = ", ".join(x for x in (c.journal, str(c.year) if c.year else "") if x)
    return f"[{c.title or f'PMID {c.pmid}'}]({c.url})" + (f". {where}" if where else "") + f" (PMID:{c.pmid})"


def after_answer(citations: Sequence[Citation], unsupported: Sequence[int], consulted: Sequence[Evidence]) -> str:
    """What follows the answer: references, evidence consulted (empty to leave it out), unsupported warning."""
    out = ""
    if citations:
        out += "\n\nReferences:\n" + "\n".join(f"- {_article(c)}" for c in citations)
    if consulted:
        out += "\n\nEvidence consulted:\n" + "\n".join(f"- {_article(e)}" for e in consulted)
    if unsupported:
        out += ("\n\nWarning: the answer cites PMIDs that were not in the retrieved evidence; they are not "
                "sources: " + ", ".join(str(p) for p in unsupported))
    return out


_PARTIAL_KEY = re.compile(r"(?:\bP|\bPM|\bPMI|\bPMIDs?)\s*[:#=]?\s*$", re.IGNORECASE)
_CONTINUATION = re.compile(r"^(?:[\s,;:#=\d]|and\b|PMIDs?\b)*$", re.IGNORECASE)


def hold_from(text: str, evidence: Collection[int]) -> int:
    """Where the part of ``text`` that may still change (an open bracket, a citation that may go on, a keyword
    being written) begins; ``text[:hold_from(...)]`` links the same now as inside any longer text."""
    cut = len(text)
    for opener, closer in (("[", "]"), ("(", ")")):
        i = text.rfind(opener)
        if i >= 0 and text.find(closer, i) < 0:
            cut = min(cut, i)
    m = _PARTIAL_KEY.search(text)
    if m:
        cut = min(cut, m.start())
    groups = parse_citations(text[:cut], evidence)
    if groups and _CONTINUATION.match(text[groups[-1].end:]):
        cut = min(cut, groups[-1].start)
    return cut


class StreamLinker:
    """Feed raw model deltas; get the linked text to send now. ``close()`` gives the rest. What has been sent is
    always a prefix of ``link_pmids(whole text)``: a citation is released only once nothing can extend it."""

    def __init__(self, evidence: Collection[int]) -> None:
        self.evidence = set(evidence)
        self.raw = ""
        self.sent = ""  # linked text released so far

    def feed(self, delta: str) -> str:
        self.raw += delta
        return self._release(self.raw[:hold_from(self.raw, self.evidence)])

    def close(self) -> str:
        return self._release(self.raw)

    def _release(self, raw: str) -> str:
        linked = link_pmids(raw, self.evidence)
        if not linked.startswith(self.sent):  # cannot happen for a safe cut; never resend or reorder text
            return ""
        out, self.sent = linked[len(self.sent):], linked
        return out
