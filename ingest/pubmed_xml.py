"""PubMed XML -> records: baseline/update files (``PubmedArticleSet`` with ``PubmedArticle``,
``PubmedBookArticle`` and ``DeleteCitation``), the 2016 ``MedlineCitationSet`` root, and efetch responses (the
same ``PubmedArticleSet``, possibly empty, or an E-utilities error document).

``lxml.etree.iterparse`` with the DTD and the network switched off; each record element is cleared once
converted, so memory stays flat whatever the file size."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

from lxml import etree

from ingest.fields import YEAR_RE, month, positive_int
from pubmind.errors import BadSourceFile
from pubmind.records import (
    AbstractSection,
    Article,
    Author,
    CommentCorrection,
    Deletion,
    MeshHeading,
    Qualifier,
    Record,
    single_spaced,
)

_HEAD_BYTES = 64 * 1024
_ORCID_RE = re.compile(r"(\d{4}-\d{4}-\d{4}-\d{3}[\dXx])")
_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_ERROR_RE = re.compile(rb"<ERROR>(.*?)</ERROR>", re.S)
_ERRORLIST_RE = re.compile(rb"<ErrorList>(.*?)</ErrorList>", re.S)
_ERRORITEM_RE = re.compile(rb"<(\w+)>([^<]*)</\1>")


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
                pmids = tuple(positive_int(p.text, name, p.sourceline, "DeleteCitation PMID") for p in el.iter("PMID"))
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
    if not len(el):  # leaf (most elements): no itertext
        return single_spaced(el.text or "")
    return " ".join("".join(el.itertext()).split())


def _opt(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    if not len(el):  # leaf: the common case, skip itertext
        t = el.text
        return single_spaced(t) or None if t else None
    return _text(el) or None


def _yn(el: etree._Element, attr: str = "MajorTopicYN") -> bool:
    return el.get(attr) == "Y"


def _kids(el: etree._Element) -> dict[str, etree._Element]:
    """The first child of each tag (``el.find(tag)`` for all tags in one pass over the children: lxml's
    ``find`` goes through ElementPath, ~1 us a call, and a record needs ~40 of them)."""
    out: dict[str, etree._Element] = {}
    for c in el:
        t = c.tag
        if t not in out:
            out[t] = c  # comments and PIs (a function as tag) are never looked up
    return out


def _ymd(el: etree._Element | None) -> str | None:
    """<Year><Month><Day> -> 'YYYY[-MM[-DD]]' (months by number or English abbreviation)."""
    if el is None:
        return None
    k = _kids(el)
    y = _leaf(k.get("Year"))
    if not y:
        return None
    out = y.strip()
    mon = month(_leaf(k.get("Month")))
    if mon:
        out += f"-{mon:02d}"
        d = (_leaf(k.get("Day")) or "").strip()
        if d.isdigit():
            out += f"-{int(d):02d}"
    return out


def _leaf(el: etree._Element | None) -> str | None:
    """``findtext``'s value for a found child: its text ('' when empty), None when there is none."""
    if el is None:
        return None
    return el.text or ""


def _pub_date(el: etree._Element | None) -> tuple[str | None, int | None]:
    if el is None:
        return None, None
    k = _kids(el)
    md = _leaf(k.get("MedlineDate"))
    if md:
        md = " ".join(md.split())
        m = YEAR_RE.search(md)
        return md, int(m.group(1)) if m else None
    d = _ymd(el)
    y = _leaf(k.get("Year"))
    return d, int(y) if y and y.strip().isdigit() else None


def _abstract(ab: etree._Element | None) -> tuple[AbstractSection, ...]:
    """The sections of an <Abstract> element."""
    if ab is None:
        return ()
    out = []
    for t in ab.iterchildren("AbstractText"):
        text = _text(t)
        if text:
            out.append(AbstractSection(text=text, label=t.get("Label") or None, category=t.get("NlmCategory")))
    return tuple(out)


def _authors(al: etree._Element | None) -> tuple[Author, ...]:
    """The valid authors of an <AuthorList> element."""
    if al is None:
        return ()
    out = []
    for a in al.iterchildren("Author"):
        if a.get("ValidYN") == "N":  # NLM marks erroneous author entries kept for the record
            continue
        f: dict[str, str | None] = {}  # one pass over the children (the first of each name wins)
        orcid = None
        for c in a:
            tag = c.tag
            if tag in _AUTHOR_FIELDS:
                if tag not in f:
                    f[tag] = _opt(c)
            elif tag == "Identifier" and orcid is None and c.get("Source") == "ORCID" and c.text:
                m = _ORCID_RE.search(c.text)
                orcid = m.group(1).upper() if m else c.text.strip()
        out.append(Author(last_name=f.get("LastName"), fore_name=f.get("ForeName"), initials=f.get("Initials"),
                          collective_name=f.get("CollectiveName"), orcid=orcid))
    return tuple(out)


_AUTHOR_FIELDS = frozenset(("LastName", "ForeName", "Initials", "CollectiveName"))


def _doi_pmc(id_list: etree._Element | None, article: etree._Element | None,
             other_ids: Iterable[etree._Element] = ()) -> tuple[str | None, str | None]:
    doi = pmc = None
    if id_list is not None:
        for aid in id_list.iterchildren("ArticleId"):
            kind = aid.get("IdType")
            if kind == "doi" and doi is None:
                doi = _opt(aid)
            elif kind == "pmc" and pmc is None:
                pmc = _opt(aid)
    if doi is None and article is not None:
        for loc in article.iterchildren("ELocationID"):
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


def _first(parents: Iterable[etree._Element], tag: str) -> etree._Element | None:
    """``find("P/tag")``: the first ``tag`` child of the first of ``parents`` that has one."""
    for p in parents:
        for c in p.iterchildren(tag):
            return c
    return None


def _child(el: etree._Element | None, tag: str) -> etree._Element | None:
    """``el.find(tag)`` for one tag (None when ``el`` is None)."""
    return None if el is None else _first((el,), tag)


def _article(mc: etree._Element | None, pd: etree._Element | None, name: str, line: int | None) -> Article:
    if mc is None:
        raise BadSourceFile(name, "PubmedArticle without MedlineCitation", line=line)
    k = _kids(mc)
    pmid_el = k.get("PMID")
    if pmid_el is None:
        raise BadSourceFile(name, "MedlineCitation without PMID", line=mc.sourceline)
    pmid = positive_int(pmid_el.text, name, pmid_el.sourceline, "PMID")
    version = positive_int(pmid_el.get("Version") or "1", name, pmid_el.sourceline, f"PMID {pmid} Version")
    art = k.get("Article")
    ka = _kids(art) if art is not None else {}
    journal = ka.get("Journal")
    kj = _kids(journal) if journal is not None else {}
    issue = kj.get("JournalIssue")
    pub_date, year = _pub_date(_child(issue, "PubDate"))
    issn = _opt(kj.get("ISSN"))
    if issn is None:  # no ISSN on the article: the journal's linking ISSN
        issn = _opt(_first(mc.iterchildren("MedlineJournalInfo"), "ISSNLinking"))
    mesh = []
    mhl = k.get("MeshHeadingList")
    if mhl is not None:
        for mh in mhl.iterchildren("MeshHeading"):
            d = _child(mh, "DescriptorName")
            if d is None:
                continue
            quals = tuple(Qualifier(name=_text(q), ui=q.get("UI"), major=_yn(q)) for q in mh.iterchildren("QualifierName"))
            mesh.append(MeshHeading(descriptor=_text(d), ui=d.get("UI"), major=_yn(d), qualifiers=quals))
    keywords = tuple(t for kl in mc.iterchildren("KeywordList") for kw in kl.iterchildren("Keyword") if (t := _text(kw)))
    ccs = []
    ccl = k.get("CommentsCorrectionsList")
    if ccl is not None:
        for cc in ccl.iterchildren("CommentsCorrections"):
            kc = _kids(cc)
            p = kc.get("PMID")
            ccs.append(CommentCorrection(
                ref_type=cc.get("RefType") or "",
                pmid=positive_int(p.text, name, p.sourceline, "CommentsCorrections PMID") if p is not None else None,
                source=_opt(kc.get("RefSource")),
            ))
    doi, pmc = _doi_pmc(_child(pd, "ArticleIdList"), art, mc.iterchildren("OtherID"))
    return Article(
        pmid=pmid, version=version,
        title=_text(ka.get("ArticleTitle")),
        abstract=_abstract(ka.get("Abstract")),
        journal=_text(kj.get("Title")),
        journal_iso=_opt(kj.get("ISOAbbreviation")),
        issn=issn, pub_date=pub_date, year=year,
        authors=_authors(ka.get("AuthorList")),
        mesh=tuple(mesh),
        publication_types=tuple(
            _text(p) for pl in art.iterchildren("PublicationTypeList") for p in pl.iterchildren("PublicationType")
        ) if art is not None else (),
        languages=tuple(_text(lang) for lang in art.iterchildren("Language")) if art is not None else (),
        keywords=keywords, doi=doi, pmc=pmc, comments_corrections=tuple(ccs),
        status=mc.get("Status"), date_revised=_ymd(k.get("DateRevised")),
    )


def _book(el: etree._Element, name: str) -> Article:
    """A PubmedBookArticle (e.g. GeneReviews chapters that efetch returns for a query)."""
    bd = el.find("BookDocument")
    if bd is None:
        raise BadSourceFile(name, "PubmedBookArticle without BookDocument", line=el.sourceline)
    pmid_el = bd.find("PMID")
    if pmid_el is None:
        raise BadSourceFile(name, "BookDocument without PMID", line=bd.sourceline)
    pmid = positive_int(pmid_el.text, name, pmid_el.sourceline, "PMID")
    book = bd.find("Book")
    pub_date, year = _pub_date(book.find("PubDate") if book is not None else None)
    ps = el.find("PubmedBookData")
    doi, pmc = _doi_pmc(bd.find("ArticleIdList") if ps is None else ps.find("ArticleIdList"), None)
    return Article(
        pmid=pmid, version=positive_int(pmid_el.get("Version") or "1", name, pmid_el.sourceline, "Version"),
        title=_text(bd.find("ArticleTitle")) or (_text(book.find("BookTitle")) if book is not None else ""),
        abstract=_abstract(_child(bd, "Abstract")),
        journal=_text(book.find("BookTitle")) if book is not None else "",
        pub_date=pub_date, year=year, authors=_authors(_child(bd, "AuthorList")),
        publication_types=tuple(_text(p) for p in bd.iterfind("PublicationType")),
        languages=tuple(_text(lang) for lang in bd.iterfind("Language")),
        keywords=tuple(t for k in bd.iterfind("KeywordList/Keyword") if (t := _text(k))),
        doi=doi, pmc=pmc, date_revised=_ymd(bd.find("DateRevised")),
    )
