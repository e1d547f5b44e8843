"""Streaming parsers for PubMed sources -> ``Article`` / ``Deletion`` records.

Formats: PubMed baseline/update XML (``PubmedArticleSet`` with ``PubmedArticle``, ``PubmedBookArticle`` and
``DeleteCitation``; plain or gzipped), the 2016 ``MedlineCitationSet`` root, efetch responses (the same
``PubmedArticleSet``, possibly empty) and MEDLINE text (``.txt``/``.nbib``, via ``Bio.Medline``).

XML goes through ``lxml.etree.iterparse`` with the DTD and the network switched off; each record element
is cleared once converted, so memory stays flat whatever the file size. Anything that cannot be ingested
raises ``BadSourceFile`` naming the file, the line where there is one, and what was wrong. Records are
yielded as they are parsed, so an error can come after some records: callers that need all-or-nothing
per file (the pipeline) must apply a file's records in one transaction.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from Bio import Medline
from lxml import etree

from pubmind.errors import BadSourceFile
from pubmind.records import (
    AbstractSection,
    Article,
    Author,
    CommentCorrection,
    Deletion,
    MeshHeading,
    Qualifier,
)

Record = Article | Deletion

XML_SUFFIXES = (".xml", ".xml.gz")
MEDLINE_SUFFIXES = (".txt", ".nbib", ".medline", ".txt.gz", ".nbib.gz")
SUFFIXES = XML_SUFFIXES + MEDLINE_SUFFIXES

_HEAD_BYTES = 64 * 1024
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_YEAR_RE = re.compile(r"\b(1[5-9]\d\d|2\d\d\d)\b")
_ORCID_RE = re.compile(r"(\d{4}-\d{4}-\d{4}-\d{3}[\dXx])")
_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_ERROR_RE = re.compile(rb"<ERROR>(.*?)</ERROR>", re.S)
_ERRORLIST_RE = re.compile(rb"<ErrorList>(.*?)</ErrorList>", re.S)
_ERRORITEM_RE = re.compile(rb"<(\w+)>([^<]*)</\1>")


# ----------------------------------------------------------------------------------------------- files
def is_source_file(path: Path) -> bool:
    """True for names the parsers accept (by suffix)."""
    return path.name.lower().endswith(SUFFIXES)


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path: str | Path) -> str:
    """MD5 of ``path``; checked against an NLM ``.md5`` sidecar (``MD5(name)= hex``) when there is one."""
    path = Path(path)
    digest = file_md5(path)
    side = path.with_name(path.name + ".md5")
    if side.exists():
        text = side.read_text(errors="replace").strip()
        m = re.fullmatch(r"(?:MD5\s*\((?P<name>[^)]*)\)\s*=\s*)?(?P<hex>[0-9a-fA-F]{32})(?:\s+\S+)?", text)
        if not m:
            raise BadSourceFile(str(side), f"not an MD5 sidecar (expected 'MD5({path.name})= <32 hex>'), "
                                           f"got {text[:80]!r}", line=1)
        if m["hex"].lower() != digest:
            raise BadSourceFile(str(path), f"MD5 mismatch: file has {digest}, {side.name} says "
                                           f"{m['hex'].lower()} (corrupt or partial download)")
    return digest


def iter_records(path: str | Path, *, check_md5: bool = True) -> Iterator[Record]:
    """Yield the records of one PubMed file (XML, XML.gz, MEDLINE text), streaming."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise BadSourceFile(name, "no such file")
    if check_md5:
        verify_md5(path)
    lower = path.name.lower()
    if lower.endswith(MEDLINE_SUFFIXES):
        yield from _iter_medline(path)
        return
    with _open_binary(path) as fh:
        yield from iter_xml(fh, name)


def _open_binary(path: Path) -> IO[bytes]:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


# ----------------------------------------------------------------------------------------------- XML
class _Replay(io.RawIOBase):
    """``head`` followed by the rest of ``stream`` (we sniff the root element before parsing)."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                out, self._head = self._head, b""
                return out + (self._stream.read(size - len(out)) if size > len(out) else b"")
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._stream.read(size)


def _read_guard(fh: IO[bytes], name: str, n: int) -> bytes:
    try:
        return fh.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise BadSourceFile(name, f"cannot decompress/read: {e}") from None


def iter_xml(fh: IO[bytes], name: str) -> Iterator[Record]:
    """Yield records from an XML byte stream (a file, a gzip stream or an efetch response body)."""
    head = _read_guard(fh, name, _HEAD_BYTES)
    if not head.strip():
        raise BadSourceFile(name, "empty file (no XML content)", line=1)
    root, line = _sniff_root(head)
    if root is None:
        raise BadSourceFile(name, f"not XML: no element found in the first {len(head)} bytes "
                                  f"(starts with {head[:40]!r})", line=1)
    if root in ("PubmedArticleSet", "PubmedArticle"):
        tags: tuple[str, ...] = ("PubmedArticle", "PubmedBookArticle", "DeleteCitation", "ERROR")
    elif root == "MedlineCitationSet":
        tags = ("MedlineCitation", "DeleteCitation")
    else:
        msg = eutils_error(head)
        if msg:
            raise BadSourceFile(name, f"E-utilities error response <{root}>: {msg}", line=line)
        raise BadSourceFile(name, f"root element <{root}> is not PubMed data "
                                  "(expected PubmedArticleSet or MedlineCitationSet)", line=line)
    parser = etree.iterparse(
        _Replay(head, fh), events=("end",), tag=tags, load_dtd=False, no_network=True,
        resolve_entities=False, dtd_validation=False, huge_tree=True,
    )
    n = 0
    try:
        for _, el in parser:
            n += 1
            tag = el.tag
            if tag == "PubmedArticle":
                yield _article(el.find("MedlineCitation"), el.find("PubmedData"), name, el.sourceline)
            elif tag == "MedlineCitation":
                yield _article(el, None, name, el.sourceline)
            elif tag == "DeleteCitation":
                pmids = tuple(_int(p.text, name, p.sourceline, "DeleteCitation PMID") for p in el.iter("PMID"))
                if pmids:
                    yield Deletion(pmids=pmids)
            elif tag == "PubmedBookArticle":
                yield _book(el, name)
            else:  # ERROR inside a PubmedArticleSet (efetch)
                raise BadSourceFile(name, f"E-utilities error: {_text(el)}", line=el.sourceline)
            el.clear(keep_tail=False)
            parent = el.getparent()
            if parent is not None:
                while el.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as e:
        raise BadSourceFile(name, f"malformed or truncated XML: {e.msg}", line=e.lineno) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise BadSourceFile(name, f"truncated or corrupt gzip after {n} records: {e}") from None


def eutils_error(data: bytes) -> str | None:
    """The message of an E-utilities ``<ERROR>`` or non-empty ``<ErrorList>`` in ``data``, else None."""
    err = _ERROR_RE.search(data)
    if err:
        return err.group(1).decode("utf-8", "replace").strip()
    el = _ERRORLIST_RE.search(data)
    if el:
        items = [f"{k.decode()}: {v.decode('utf-8', 'replace').strip()}"
                 for k, v in _ERRORITEM_RE.findall(el.group(1)) if v.strip()]
        if items:
            return "ErrorList " + "; ".join(items)
    return None


def parse_xml_bytes(data: bytes, name: str) -> list[Record]:
    """All records of one in-memory XML document (an efetch response)."""
    return list(iter_xml(io.BytesIO(data), name))


def _sniff_root(head: bytes) -> tuple[str | None, int]:
    pos = 0
    while True:
        i = head.find(b"<", pos)
        if i < 0 or i + 1 >= len(head):
            return None, 1
        nxt = head[i + 1:i + 2]
        if nxt == b"?":
            pos = head.find(b"?>", i) + 2 if head.find(b"?>", i) >= 0 else len(head)
            continue
        if head.startswith(b"<!--", i):
            end = head.find(b"-->", i)
            pos = end + 3 if end >= 0 else len(head)
            continue
        if nxt == b"!":  # DOCTYPE, possibly with an internal subset [...]
            br, gt = head.find(b"[", i), head.find(b">", i)
            if 0 <= br < gt:
                end = head.find(b"]", br)
                gt = head.find(b">", end) if end >= 0 else -1
            pos = gt + 1 if gt >= 0 else len(head)
            continue
        m = _ROOT_RE.match(head, i)
        if not m:
            return None, head[:i].count(b"\n") + 1
        return m.group(1).decode("ascii", "replace"), head[:i].count(b"\n") + 1


# Element helpers (lxml elements; ``None``-tolerant).
def _text(el: etree._Element | None) -> str:
    """All text under ``el`` (inline markup such as <i>, <sup>, MathML flattened), whitespace-normalised."""
    if el is None:
        return ""
    return " ".join("".join(el.itertext()).split())


def _opt(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    if not len(el):  # leaf: the common case, skip itertext
        t = el.text
        if not t:
            return None
        t = t.strip()
        return (" ".join(t.split()) if "  " in t or "\n" in t else t) or None
    return _text(el) or None


def _int(text: str | None, name: str, line: int | None, what: str) -> int:
    try:
        v = int((text or "").strip())
    except ValueError:
        raise BadSourceFile(name, f"{what} is not an integer: {text!r}", line=line) from None
    if v <= 0:
        raise BadSourceFile(name, f"{what} must be positive, got {v}", line=line)
    return v


def _yn(el: etree._Element, attr: str = "MajorTopicYN") -> bool:
    return el.get(attr) == "Y"


def _ymd(el: etree._Element | None) -> str | None:
    """<Year><Month><Day> -> 'YYYY[-MM[-DD]]' (months by number or English abbreviation)."""
    if el is None:
        return None
    y = el.findtext("Year")
    if not y:
        return None
    out = y.strip()
    mon = _month(el.findtext("Month"))
    if mon:
        out += f"-{mon:02d}"
        d = (el.findtext("Day") or "").strip()
        if d.isdigit():
            out += f"-{int(d):02d}"
    return out


def _month(m: str | None) -> int | None:
    if not m:
        return None
    m = m.strip()
    if m.isdigit():
        return int(m) if 1 <= int(m) <= 12 else None
    return _MONTHS.get(m[:3].lower())


def _pub_date(el: etree._Element | None) -> tuple[str | None, int | None]:
    if el is None:
        return None, None
    md = el.findtext("MedlineDate")
    if md:
        md = " ".join(md.split())
        m = _YEAR_RE.search(md)
        return md, int(m.group(1)) if m else None
    d = _ymd(el)
    y = el.findtext("Year")
    return d, int(y) if y and y.strip().isdigit() else None


def _abstract(parent: etree._Element | None) -> tuple[AbstractSection, ...]:
    if parent is None:
        return ()
    ab = parent.find("Abstract")
    if ab is None:
        return ()
    out = []
    for t in ab.iterfind("AbstractText"):
        text = _text(t)
        if text:
            out.append(AbstractSection(text=text, label=t.get("Label") or None, category=t.get("NlmCategory")))
    return tuple(out)


def _authors(parent: etree._Element | None) -> tuple[Author, ...]:
    if parent is None:
        return ()
    al = parent.find("AuthorList")
    if al is None:
        return ()
    out = []
    for a in al.iterfind("Author"):
        if a.get("ValidYN") == "N":  # NLM marks erroneous author entries kept for the record
            continue
        orcid = None
        for ident in a.iterfind("Identifier"):
            if ident.get("Source") == "ORCID" and ident.text:
                m = _ORCID_RE.search(ident.text)
                orcid = m.group(1).upper() if m else ident.text.strip()
                break
        out.append(Author(
            last_name=_opt(a.find("LastName")), fore_name=_opt(a.find("ForeName")),
            initials=_opt(a.find("Initials")), collective_name=_opt(a.find("CollectiveName")), orcid=orcid,
        ))
    return tuple(out)


def _doi_pmc(id_list: etree._Element | None, article: etree._Element | None,
             other_ids: Iterable[etree._Element] = ()) -> tuple[str | None, str | None]:
    doi = pmc = None
    if id_list is not None:
        for aid in id_list.iterfind("ArticleId"):
            kind = aid.get("IdType")
            if kind == "doi" and doi is None:
                doi = _opt(aid)
            elif kind == "pmc" and pmc is None:
                pmc = _opt(aid)
    if doi is None and article is not None:
        for loc in article.iterfind("ELocationID"):
            if loc.get("EIdType") == "doi" and loc.get("ValidYN") != "N":
                doi = _opt(loc)
                break
    if pmc is None:  # MedlineCitationSet (no PubmedData): <OtherID Source="NLM">PMC123 [available on ...]
        for o in other_ids:
            t = (o.text or "").strip()
            if o.get("Source") == "NLM" and t.startswith("PMC"):
                pmc = t.split()[0]
                break
    return doi, pmc


def _article(mc: etree._Element | None, pd: etree._Element | None, name: str, line: int | None) -> Article:
    if mc is None:
        raise BadSourceFile(name, "PubmedArticle without MedlineCitation", line=line)
    pmid_el = mc.find("PMID")
    if pmid_el is None:
        raise BadSourceFile(name, "MedlineCitation without PMID", line=mc.sourceline)
    pmid = _int(pmid_el.text, name, pmid_el.sourceline, "PMID")
    version = _int(pmid_el.get("Version") or "1", name, pmid_el.sourceline, f"PMID {pmid} Version")
    art = mc.find("Article")
    journal = art.find("Journal") if art is not None else None
    issue = journal.find("JournalIssue") if journal is not None else None
    pub_date, year = _pub_date(issue.find("PubDate") if issue is not None else None)
    issn = _opt(journal.find("ISSN")) if journal is not None else None
    if issn is None:  # no ISSN on the article: the journal's linking ISSN
        issn = _opt(mc.find("MedlineJournalInfo/ISSNLinking"))
    mesh = []
    mhl = mc.find("MeshHeadingList")
    if mhl is not None:
        for mh in mhl.iterfind("MeshHeading"):
            d = mh.find("DescriptorName")
            if d is None:
                continue
            quals = tuple(Qualifier(name=_text(q), ui=q.get("UI"), major=_yn(q)) for q in mh.iterfind("QualifierName"))
            mesh.append(MeshHeading(descriptor=_text(d), ui=d.get("UI"), major=_yn(d), qualifiers=quals))
    keywords = tuple(t for kl in mc.iterfind("KeywordList") for k in kl.iterfind("Keyword") if (t := _text(k)))
    ccs = []
    ccl = mc.find("CommentsCorrectionsList")
    if ccl is not None:
        for cc in ccl.iterfind("CommentsCorrections"):
            p = cc.find("PMID")
            ccs.append(CommentCorrection(
                ref_type=cc.get("RefType") or "",
                pmid=_int(p.text, name, p.sourceline, "CommentsCorrections PMID") if p is not None else None,
                source=_opt(cc.find("RefSource")),
            ))
    doi, pmc = _doi_pmc(pd.find("ArticleIdList") if pd is not None else None, art, mc.iterfind("OtherID"))
    return Article(
        pmid=pmid, version=version,
        title=_text(art.find("ArticleTitle")) if art is not None else "",
        abstract=_abstract(art),
        journal=_text(journal.find("Title")) if journal is not None else "",
        journal_iso=_opt(journal.find("ISOAbbreviation")) if journal is not None else None,
        issn=issn, pub_date=pub_date, year=year,
        authors=_authors(art),
        mesh=tuple(mesh),
        publication_types=tuple(
            _text(p) for p in art.iterfind("PublicationTypeList/PublicationType")) if art is not None else (),
        languages=tuple(_text(lang) for lang in art.iterfind("Language")) if art is not None else (),
        keywords=keywords, doi=doi, pmc=pmc, comments_corrections=tuple(ccs),
        status=mc.get("Status"), date_revised=_ymd(mc.find("DateRevised")),
    )


def _book(el: etree._Element, name: str) -> Article:
    """A PubmedBookArticle (e.g. GeneReviews chapters that efetch returns for a query)."""
    bd = el.find("BookDocument")
    if bd is None:
        raise BadSourceFile(name, "PubmedBookArticle without BookDocument", line=el.sourceline)
    pmid_el = bd.find("PMID")
    if pmid_el is None:
        raise BadSourceFile(name, "BookDocument without PMID", line=bd.sourceline)
    pmid = _int(pmid_el.text, name, pmid_el.sourceline, "PMID")
    book = bd.find("Book")
    pub_date, year = _pub_date(book.find("PubDate") if book is not None else None)
    ps = el.find("PubmedBookData")
    doi, pmc = _doi_pmc(bd.find("ArticleIdList") if ps is None else ps.find("ArticleIdList"), None)
    return Article(
        pmid=pmid, version=_int(pmid_el.get("Version") or "1", name, pmid_el.sourceline, "Version"),
        title=_text(bd.find("ArticleTitle")) or (_text(book.find("BookTitle")) if book is not None else ""),
        abstract=_abstract(bd),
        journal=_text(book.find("BookTitle")) if book is not None else "",
        pub_date=pub_date, year=year, authors=_authors(bd),
        publication_types=tuple(_text(p) for p in bd.iterfind("PublicationType")),
        languages=tuple(_text(lang) for lang in bd.iterfind("Language")),
        keywords=tuple(t for k in bd.iterfind("KeywordList/Keyword") if (t := _text(k))),
        doi=doi, pmc=pmc, date_revised=_ymd(bd.find("DateRevised")),
    )


# ----------------------------------------------------------------------------------------------- MEDLINE
_CC_TAGS = {
    "CIN": "CommentIn", "CON": "CommentOn", "EIN": "ErratumIn", "EFR": "ErratumFor",
    "RIN": "RetractionIn", "ROF": "RetractionOf", "PRIN": "PartialRetractionIn",
    "PROF": "PartialRetractionOf", "ECI": "ExpressionOfConcernIn", "ECF": "ExpressionOfConcernFor",
    "CRI": "CorrectedandRepublishedIn", "CRF": "CorrectedandRepublishedFrom", "UIN": "UpdateIn",
    "UOF": "UpdateOf", "RPI": "RepublishedIn", "RPF": "RepublishedFrom", "SPIN": "SummaryForPatientsIn",
    "ORI": "OriginalReportIn",
}
_DP_RE = re.compile(r"^(\d{4})(?: ([A-Za-z]{3})(?: (\d{1,2}))?)?$")


def _iter_medline(path: Path) -> Iterator[Record]:
    name = str(path)
    state = {"line": 0}

    def lines(fh: IO[str]) -> Iterator[str]:
        for ln in fh:
            state["line"] += 1
            yield ln

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for rec in Medline.parse(lines(fh)):
                n += 1
                yield _medline_article(rec, name, state["line"])
    except UnicodeDecodeError as e:
        raise BadSourceFile(name, f"not UTF-8 text: {e}", line=state["line"] or None) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise BadSourceFile(name, f"truncated or corrupt gzip: {e}") from None
    if n == 0:
        raise BadSourceFile(name, "empty file (no MEDLINE records)", line=1)


def _medline_article(rec: dict, name: str, line: int) -> Article:
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
    pmid = _int(one("PMID"), name, line, "PMID")
    dp = one("DP")
    pub_date, year = dp, None
    if dp:
        m = _YEAR_RE.search(dp)
        year = int(m.group(1)) if m else None
        dm = _DP_RE.match(dp)
        if dm:
            pub_date = dm.group(1)
            mon = _month(dm.group(2))
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
