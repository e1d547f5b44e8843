"""MEDLINE text (``.txt``/``.nbib``, as PubMed's "Save: PubMed format" writes it) -> records, via ``Bio.Medline``."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from Bio import Medline

from ingest.fields import YEAR_RE, month, positive_int
from pubmind.errors import BadSourceFile
from pubmind.records import (
    AbstractSection,
    Article,
    Author,
    CommentCorrection,
    MeshHeading,
    Qualifier,
    Record,
)

_CC_TAGS = {
    "CIN": "CommentIn", "CON": "CommentOn", "EIN": "ErratumIn", "EFR": "ErratumFor",
    "RIN": "RetractionIn", "ROF": "RetractionOf", "PRIN": "PartialRetractionIn",
    "PROF": "PartialRetractionOf", "ECI": "ExpressionOfConcernIn", "ECF": "ExpressionOfConcernFor",
    "CRI": "CorrectedandRepublishedIn", "CRF": "CorrectedandRepublishedFrom", "UIN": "UpdateIn",
    "UOF": "UpdateOf", "RPI": "RepublishedIn", "RPF": "RepublishedFrom", "SPIN": "SummaryForPatientsIn",
    "ORI": "OriginalReportIn",
}
_DP_RE = re.compile(r"^(\d{4})(?: ([A-Za-z]{3})(?: (\d{1,2}))?)?$")


def iter_medline(path: Path, data: bytes | None = None) -> Iterator[Record]:
    """Records of a MEDLINE text file; ``data``: the file's bytes (read elsewhere), ``path`` then only names it."""
    name = str(path)
    state = {"line": 0}

    def lines(fh: IO[str]) -> Iterator[str]:
        for ln in fh:
            state["line"] += 1
            yield ln

    n = 0
    try:
        with _open_text(path, data) as fh:
            for rec in Medline.parse(lines(fh)):
                n += 1
                yield _medline_article(rec, name, state["line"])
    except UnicodeDecodeError as e:
        raise BadSourceFile(name, f"not UTF-8 text: {e}", line=state["line"] or None) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise BadSourceFile(name, f"truncated or corrupt gzip: {e}") from None
    if n == 0:
        raise BadSourceFile(name, "empty file (no MEDLINE records)", line=1)


def _open_text(path: Path, data: bytes | None) -> IO[str]:
    """``path`` (or its bytes ``data``) as UTF-8 text, gunzipped when the name ends in .gz."""
    gz = path.name.lower().endswith(".gz")
    if data is not None:
        raw = io.BytesIO(data)
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw) if gz else raw, encoding="utf-8")
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def _medline_article(rec: dict[str, Any], name: str, line: int) -> Article:
    def one(key: str) -> str | None:
        v = rec.get(key)
        if isinstance(v, list):
            v = " ".join(v)
        v = " ".join(v.split()) if v else ""
        return v or None

    def many(key: str) -> list[str]:
        v = rec.get(key, [])
        return [" ".join(x.split()) for x in ([v] if isinstance(v, str) else v) if x.strip()]

    if "PMID" not in rec:
        raise BadSourceFile(name, f"MEDLINE record without a PMID line (keys {sorted(rec)[:8]}); "
                                  "is this MEDLINE/nbib text?", line=line)
    pmid = positive_int(one("PMID"), name, line, "PMID")
    dp = one("DP")
    pub_date, year = dp, None
    if dp:
        m = YEAR_RE.search(dp)
        year = int(m.group(1)) if m else None
        dm = _DP_RE.match(dp)
        if dm:
            pub_date = dm.group(1)
            mon = month(dm.group(2))
            if mon:
                pub_date += f"-{mon:02d}" + (f"-{int(dm.group(3)):02d}" if dm.group(3) else "")
    fau, au = many("FAU"), many("AU")
    authors = []
    for i, full in enumerate(fau):
        last, _, fore = full.partition(", ")
        initials = au[i].rpartition(" ")[2] if len(au) == len(fau) and " " in au[i] else None
        authors.append(Author(last_name=last or None, fore_name=fore or None, initials=initials))
    if not fau:
        authors = [Author(last_name=a.rpartition(" ")[0] or a, initials=a.rpartition(" ")[2] or None) for a in au]
    authors += [Author(collective_name=c) for c in many("CN")]
    mesh = []
    for mh in many("MH"):
        parts = mh.split("/")
        d = parts[0]
        mesh.append(MeshHeading(
            descriptor=d.lstrip("*"), major=d.startswith("*"),
            qualifiers=tuple(Qualifier(name=q.lstrip("*"), major=q.startswith("*")) for q in parts[1:]),
        ))
    doi = None
    for aid in [*many("AID"), *many("LID")]:
        m = re.search(r"(\S+) \[doi\]", aid)
        if m:
            doi = m.group(1)
            break
    ccs = []
    for tag, ref_type in _CC_TAGS.items():
        for v in many(tag):
            m = re.search(r"PMID: ?(\d+)", v)
            ccs.append(CommentCorrection(ref_type=ref_type, pmid=int(m.group(1)) if m else None,
                                         source=re.sub(r"\s*PMID: ?\d+\s*$", "", v) or None))
    lr = one("LR")
    ab = one("AB")
    issn = one("IS")
    return Article(
        pmid=pmid, title=one("TI") or "",
        abstract=(AbstractSection(text=ab),) if ab else (),
        journal=one("JT") or "", journal_iso=one("TA"), issn=issn.split()[0] if issn else None,
        pub_date=pub_date, year=year, authors=tuple(authors), mesh=tuple(mesh),
        publication_types=tuple(many("PT")), languages=tuple(many("LA")), keywords=tuple(many("OT")),
        doi=doi, pmc=one("PMC"), comments_corrections=tuple(ccs), status=one("STAT"),
        date_revised=f"{lr[:4]}-{lr[4:6]}-{lr[6:8]}" if lr and len(lr) == 8 and lr.isdigit() else None,
    )
