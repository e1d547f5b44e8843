"""Citations in generated answers: parse (canonical and the loose variants models write), verify against the
evidence that was in the prompt, and normalise to the canonical ``[PMID:n]`` form.

Recognised (case-insensitive): ``[PMID:1]``, ``[PMID:1, PMID:2]``, ``[PMID: 1; 2]``, ``[PMIDs 1, 2]``,
``(PMID: 1)``, ``PMID:1``, ``PMID 1``, ``pmid #1``; a bare ``[12345678]`` / ``[1, 2]`` only when every number
is an evidence PMID. Outside brackets a list continues only with an explicit key (``PMID 1, PMID 2``), so
"in PMID 1, 20 patients" cites only PMID 1.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

import msgspec

_NUM = r"\d{1,9}(?!\d)"
_KEY = r"\bPMIDs?\b\s*[:#=]?\s*"
_SEP = r"\s*[,;]\s*(?:and\s+)?"
_INNER = rf"{_KEY}{_NUM}(?:{_SEP}(?:{_KEY})?{_NUM})*"  # inside brackets: later keys optional
_OUTER = rf"{_KEY}{_NUM}(?:{_SEP}{_KEY}{_NUM})*"  # in running text: every number keyed
_KEYED = re.compile(rf"\[\s*(?:{_INNER})\s*\]|\(\s*(?:{_INNER})\s*\)|{_OUTER}", re.IGNORECASE)
_BARE = re.compile(rf"\[\s*{_NUM}(?:{_SEP}{_NUM})*\s*\]")
_DIGITS = re.compile(r"\d+")
_CANONICAL = re.compile(r"\[PMID:(\d+)\]")


class Citation(msgspec.Struct, frozen=True):
    """One citation group in the text: ``text[start:end]`` cites ``pmids`` (in order)."""

    start: int
    end: int
    pmids: tuple[int, ...]
    canonical: bool  # already exactly [PMID:n]


class CitationReport(msgspec.Struct, frozen=True):
    cited: list[int]  # unique, in order of first citation
    supported: list[int]  # cited and in the evidence
    unsupported: list[int]  # cited but not in the evidence (hallucinated or mistyped)

    @property
    def ok(self) -> bool:
        return bool(self.cited) and not self.unsupported


def parse_citations(text: str, evidence_pmids: Collection[int] = ()) -> list[Citation]:
    """Every citation group in ``text``, in order. Bare bracketed numbers count only when all of them are
    in ``evidence_pmids``."""
    found = [
        Citation(m.start(), m.end(), tuple(int(n) for n in _DIGITS.findall(m.group())),
                 _CANONICAL.fullmatch(m.group()) is not None)
        for m in _KEYED.finditer(text)
    ]
    if evidence_pmids:
        ev = set(evidence_pmids)
        for m in _BARE.finditer(text):
            nums = tuple(int(n) for n in _DIGITS.findall(m.group()))
            if all(n in ev for n in nums):
                found.append(Citation(m.start(), m.end(), nums, False))
    return sorted(found, key=lambda c: c.start)


def cited_pmids(text: str, evidence_pmids: Collection[int] = ()) -> list[int]:
    """Unique cited PMIDs in order of first appearance."""
    return list(dict.fromkeys(p for c in parse_citations(text, evidence_pmids) for p in c.pmids))


def verify(answer: str, evidence_pmids: Iterable[int]) -> CitationReport:
    """Which cited PMIDs were in the evidence the model was given."""
    ev = set(evidence_pmids)
    cited = cited_pmids(answer, ev)
    return CitationReport(cited, [p for p in cited if p in ev], [p for p in cited if p not in ev])


def normalize_citations(text: str, evidence_pmids: Collection[int] = ()) -> str:
    """Rewrite every citation group to canonical keys: ``(PMID: 1; 2)`` -> ``[PMID:1][PMID:2]``."""
    out, pos = [], 0
    for c in parse_citations(text, evidence_pmids):
        out += [text[pos:c.start], "".join(f"[PMID:{p}]" for p in c.pmids)]
        pos = c.end
    out.append(text[pos:])
    return "".join(out)
