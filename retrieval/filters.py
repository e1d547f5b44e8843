"""Metadata filters: the ``Filters`` struct, its parsing from request dicts, and its SQL over the store's
normalised filter tables (every condition is served by an index)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from pubmind.errors import InvalidInput


class Filters(msgspec.Struct, kw_only=True, frozen=True):
    """Metadata filters; list fields match ANY of their values, fields combine with AND.
    Names are matched case-insensitively (ASCII)."""

    year_from: int | None = None
    year_to: int | None = None
    journals: tuple[str, ...] = ()  # full title or ISO abbreviation
    mesh: tuple[str, ...] = ()  # MeSH descriptor names
    mesh_major_only: bool = False  # only articles where a listed descriptor is a major topic
    publication_types: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()  # ISO 639-2 codes, e.g. "eng"
    exclude_retracted: bool = False

    @property
    def empty(self) -> bool:
        return self == Filters()


FILTER_FIELDS = tuple(Filters.__struct_fields__)
_LIST_FIELDS = ("journals", "mesh", "publication_types", "languages")


def _check_years(f: Filters) -> None:
    if f.year_from is not None and f.year_to is not None and f.year_from > f.year_to:
        raise InvalidInput(f"filters.year_from={f.year_from} is after filters.year_to={f.year_to}",
                           param="filters.year_from")


def parse_filters(filters: Filters | Mapping[str, Any] | None) -> Filters:
    """A Filters struct from a struct, a dict (unknown fields rejected) or None; inverted years rejected."""
    if filters is None:
        return Filters()
    if not isinstance(filters, Filters):
        if not isinstance(filters, Mapping):
            raise InvalidInput(f"filters must be an object, got {type(filters).__name__}", param="filters")
        unknown = sorted(set(filters) - set(FILTER_FIELDS))
        if unknown:
            raise InvalidInput(f"unknown filter field {unknown[0]!r}; known: {', '.join(FILTER_FIELDS)}",
                               param=f"filters.{unknown[0]}")
        vals = {k: (v,) if isinstance(v, str) and k in _LIST_FIELDS else v for k, v in filters.items() if v is not None}
        try:
            filters = msgspec.convert(vals, Filters)
        except msgspec.ValidationError as e:
            raise InvalidInput(f"bad filters: {e}", param="filters") from None
    _check_years(filters)
    return filters


def filter_sql(filters: Filters | None) -> tuple[str, list[Any]] | None:
    """``(sql, params)`` of ``SELECT a.pmid FROM articles a WHERE ...`` for these filters, or None if they
    filter nothing."""
    if filters is None or filters.empty:
        return None
    f = filters
    _check_years(f)
    if f.mesh_major_only and not f.mesh:
        raise InvalidInput("filters.mesh_major_only=true needs filters.mesh descriptors",
                           param="filters.mesh_major_only")
    conds: list[str] = []
    params: list[Any] = []

    def ph(values: Sequence[str]) -> str:
        params.extend(values)
        return ",".join("?" * len(values))

    if f.year_from is not None:
        conds.append("a.year >= ?")
        params.append(f.year_from)
    if f.year_to is not None:
        conds.append("a.year <= ?")
        params.append(f.year_to)
    if f.journals:
        conds.append(f"(a.journal IN ({ph(f.journals)}) OR a.journal_iso IN ({ph(f.journals)}))")
    if f.mesh:
        major = " AND major = 1" if f.mesh_major_only else ""
        conds.append(f"a.pmid IN (SELECT pmid FROM article_mesh WHERE descriptor IN ({ph(f.mesh)}){major})")
    if f.publication_types:
        conds.append(f"a.pmid IN (SELECT pmid FROM article_pubtypes WHERE ptype IN ({ph(f.publication_types)}))")
    if f.languages:
        conds.append(f"a.pmid IN (SELECT pmid FROM article_languages WHERE language IN ({ph(f.languages)}))")
    if f.exclude_retracted:
        conds.append("a.retracted = 0")
    return "SELECT a.pmid FROM articles a WHERE " + " AND ".join(conds), params
