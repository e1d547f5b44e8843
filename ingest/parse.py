"""Streaming parsers for PubMed sources -> ``Article`` / ``Deletion`` records.

Formats: PubMed baseline/update XML (``PubmedArticleSet`` with ``PubmedArticle``, ``PubmedBookArticle`` and
``DeleteCitation``; plain or gzipped), the 2016 ``MedlineCitationSet`` root, efetch responses (the same
``PubmedArticleSet``, possibly empty) and MEDLINE text (``.txt``/``.nbib``, via ``Bio.Medline``).

One module per format: ``ingest.pubmed_xml`` (PubmedArticleSet / MedlineCitationSet / efetch),
``ingest.medline`` (MEDLINE text); ``ingest.files`` finds source files and checks MD5s; this module picks
the parser for a file. Anything that cannot be ingested raises ``BadSourceFile`` naming the file, the line where there is one, and what was wrong. Records are
yielded as they are parsed, so an error can come after some records: callers that need all-or-nothing
per file (the pipeline) must apply a file's records in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.files import (
    MEDLINE_SUFFIXES,
    SUFFIXES,
    XML_SUFFIXES,
    file_md5,
    is_source_file,
    open_binary,
    verify_md5,
)
from ingest.medline import iter_medline
from ingest.pubmed_xml import eutils_error, iter_xml, parse_xml_bytes
from pubmind.errors import BadSourceFile
from pubmind.records import Article, Deletion, Record

__all__ = ["MEDLINE_SUFFIXES", "SUFFIXES", "XML_SUFFIXES", "Article", "Deletion", "Record", "eutils_error",
           "file_md5", "is_source_file", "iter_records", "iter_xml", "parse_xml_bytes", "verify_md5"]


def iter_records(path: str | Path, *, check_md5: bool = True, data: bytes | None = None) -> Iterator[Record]:
    """Yield the records of one PubMed file (XML, XML.gz, MEDLINE text), streaming. ``data``: the file's
    bytes, read elsewhere (a Ray parse task on another machine); ``path`` then only names the file (its
    format, its errors) and is not opened."""
    path = Path(path)
    name = str(path)
    if data is None:
        if not path.is_file():
            raise BadSourceFile(name, "no such file")
        if check_md5:
            verify_md5(path)
    if path.name.lower().endswith(MEDLINE_SUFFIXES):
        yield from iter_medline(path, data)
        return
    with open_binary(path, data) as fh:
        yield from iter_xml(fh, name)
