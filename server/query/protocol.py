"""Wire format of ``POST /v1/query`` (msgspec Structs; Litestar validates bodies and documents them).
Every value is bounded here or in the service, so absurd input is a 400 naming the field, never a 500."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from retrieval.store import Filters

YEAR = msgspec.Meta(ge=0, le=9999, description="A publication year.")
NAME = msgspec.Meta(min_length=1, max_length=300)
NAMES = msgspec.Meta(max_length=100, description="At most 100 values.")
MODEL = msgspec.Meta(min_length=1, max_length=200,
                     description="'base', an adapter name (its current version) or 'NAME@vN'.")


class QueryFilters(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Metadata filters applied before top-k; list fields match any of their values, fields combine with AND."""

    year_from: Annotated[int, YEAR] | None = None
    year_to: Annotated[int, YEAR] | None = None
    journals: Annotated[list[Annotated[str, NAME]], NAMES] = msgspec.field(default_factory=list)
    mesh: Annotated[list[Annotated[str, NAME]], NAMES] = msgspec.field(default_factory=list)
    mesh_major_only: bool = False
    publication_types: Annotated[list[Annotated[str, NAME]], NAMES] = msgspec.field(default_factory=list)
    languages: Annotated[list[Annotated[str, NAME]], NAMES] = msgspec.field(default_factory=list)
    exclude_retracted: bool = False

    def to_filters(self) -> Filters:
        return Filters(year_from=self.year_from, year_to=self.year_to, journals=tuple(self.journals),
                       mesh=tuple(self.mesh), mesh_major_only=self.mesh_major_only,
                       publication_types=tuple(self.publication_types), languages=tuple(self.languages),
                       exclude_retracted=self.exclude_retracted)


class QueryRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    question: Annotated[str, msgspec.Meta(description="The question, in natural language.")]
    k: Annotated[int | None, msgspec.Meta(description="Articles to retrieve (default retrieval.k).")] = None
    filters: QueryFilters | None = None
    mode: Annotated[Literal["answer", "search"], msgspec.Meta(
        description="'answer' generates a cited answer; 'search' returns the evidence only.")] = "answer"
    retrieval: Annotated[Literal["dense", "lexical", "hybrid"] | None, msgspec.Meta(
        description="Retriever (default retrieval.mode).")] = None
    model: Annotated[str, MODEL] = "base"
    stream: Annotated[bool, msgspec.Meta(
        description="Server-sent events: evidence, answer deltas, citations, done.")] = False
    max_tokens: Annotated[int | None, msgspec.Meta(
        description="Most tokens to generate (1 to llm.max_tokens).")] = None


class Citation(msgspec.Struct, kw_only=True):
    pmid: int
    title: str
    journal: str
    year: int | None
    url: str
    snippet: str
    score: float


class Evidence(Citation, kw_only=True):
    rank: int
    in_prompt: bool  # rendered into the prompt (the model could cite it)


class QueryResponse(msgspec.Struct, kw_only=True):
    id: str
    answer: str | None
    citations: list[Citation]
    unsupported_citations: list[int]
    evidence: list[Evidence]
    model: str
    adapter: str | None
    index_version: str | None
    timings_ms: dict[str, float]
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
