"""Field helpers shared by the PubMed XML and MEDLINE text parsers."""

from __future__ import annotations

import re

from pubmind.errors import BadSourceFile

MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
YEAR_RE = re.compile(r"\b(1[5-9]\d\d|2\d\d\d)\b")


def positive_int(text: str | None, name: str, line: int | None, what: str) -> int:
    try:
        v = int((text or "").strip())
    except ValueError:
        raise BadSourceFile(name, f"{what} is not an integer: {text!r}", line=line) from None
    if v <= 0:
        raise BadSourceFile(name, f"{what} must be positive, got {v}", line=line)
    return v


def month(m: str | None) -> int | None:
    if not m:
        return None
    m = m.strip()
    if m.isdigit():
        return int(m) if 1 <= int(m) <= 12 else None
    return MONTHS.get(m[:3].lower())
