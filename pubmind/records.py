"""The article record every layer shares: parsers produce it, the store keeps it (as msgspec JSON),
retrieval filters and cites by it, the API returns it."""

from __future__ import annotations

import msgspec


class AbstractSection(msgspec.Struct, frozen=True, gc=False):
    text: str
    label: str | None = None  # e.g. "BACKGROUND" (Label attribute), None for unstructured abstracts
    category: str | None = None  # NlmCategory: BACKGROUND/OBJECTIVE/METHODS/RESULTS/CONCLUSIONS/UNASSIGNED


class Author(msgspec.Struct, frozen=True, gc=False):
    last_name: str | None = None
    fore_name: str | None = None
    initials: str | None = None
    collective_name: str | None = None  # group authors
    orcid: str | None = None

    @property
    def display(self) -> str:
        if self.collective_name:
            return self.collective_name
        return " ".join(p for p in (self.last_name, self.initials) if p)


class Qualifier(msgspec.Struct, frozen=True, gc=False):
    name: str
    ui: str | None = None
    major: bool = False


class MeshHeading(msgspec.Struct, frozen=True, gc=False):
    descriptor: str
    ui: str | None = None  # e.g. "D006801"
    major: bool = False  # MajorTopicYN of the descriptor
    qualifiers: tuple[Qualifier, ...] = ()

    @property
    def any_major(self) -> bool:
        """Major topic through the descriptor or any of its qualifiers (how PubMed's [majr] works)."""
        return self.major or any(q.major for q in self.qualifiers)


class CommentCorrection(msgspec.Struct, frozen=True, gc=False):
    ref_type: str  # "RetractionIn", "ErratumIn", "CommentIn", ...
    pmid: int | None = None
    source: str | None = None  # RefSource text


RETRACTION_TYPES = frozenset({"RetractionIn", "RetractionOf", "ExpressionOfConcernIn"})


class Article(msgspec.Struct, kw_only=True, gc=False):
    pmid: int
    version: int = 1
    title: str = ""
    abstract: tuple[AbstractSection, ...] = ()
    journal: str = ""  # full journal title
    journal_iso: str | None = None  # ISO abbreviation, e.g. "J Biol Chem"
    issn: str | None = None
    pub_date: str | None = None  # "YYYY", "YYYY-MM", "YYYY-MM-DD" or the raw MedlineDate text
    year: int | None = None
    authors: tuple[Author, ...] = ()
    mesh: tuple[MeshHeading, ...] = ()
    publication_types: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()  # ISO 639-2, e.g. ("eng",)
    keywords: tuple[str, ...] = ()
    doi: str | None = None
    pmc: str | None = None  # e.g. "PMC1234567"
    comments_corrections: tuple[CommentCorrection, ...] = ()
    status: str | None = None  # MedlineCitation Status, e.g. "MEDLINE", "PubMed-not-MEDLINE"
    date_revised: str | None = None

    def __post_init__(self) -> None:
        if self.pmid <= 0:
            raise ValueError(f"pmid must be positive, got {self.pmid}")
        if self.version < 1:
            raise ValueError(f"version must be >= 1, got {self.version} for PMID {self.pmid}")

    @property
    def abstract_text(self) -> str:
        """The abstract as one text; structured sections keep their labels ("METHODS: ...")."""
        return "\n".join(f"{s.label}: {s.text}" if s.label else s.text for s in self.abstract)

    @property
    def retracted(self) -> bool:
        """Retracted (or under an expression of concern) per CommentsCorrections or publication type."""
        return "Retracted Publication" in self.publication_types or any(
            c.ref_type in ("RetractionIn", "ExpressionOfConcernIn") for c in self.comments_corrections
        )

    @property
    def url(self) -> str:
        return f"https://pubmed.ncbi.nlm.nih.gov/{self.pmid}/"


class Deletion(msgspec.Struct, frozen=True, gc=False):
    """A DeleteCitation block from an update file: remove these PMIDs from store and index."""

    pmids: tuple[int, ...]


Record = Article | Deletion

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Article)


def single_spaced(t: str) -> str:
    """``" ".join(t.split())``, skipping the split when ``t`` has no whitespace but single spaces (str's
    printable characters include no whitespace other than ' '): parsed text usually is single-spaced."""
    return t.strip(" ") if "  " not in t and t.isprintable() else " ".join(t.split())


def article_to_json(a: Article) -> bytes:
    return _encoder.encode(a)


def article_from_json(b: bytes | str) -> Article:
    return _decoder.decode(b)
