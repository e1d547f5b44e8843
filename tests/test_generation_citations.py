"""Citation parsing, verification and normalisation."""

from __future__ import annotations

import pytest

from generation.citations import cited_pmids, normalize_citations, parse_citations, verify

EV = {12345678, 23456789, 34567890}


@pytest.mark.parametrize(
    ("text", "pmids"),
    [
        ("Aspirin helps [PMID:12345678].", [12345678]),
        ("Aspirin helps [PMID:12345678, PMID:23456789].", [12345678, 23456789]),
        ("Aspirin helps [PMID: 12345678; 23456789].", [12345678, 23456789]),
        ("Aspirin helps [PMIDs 12345678, and 23456789].", [12345678, 23456789]),
        ("Aspirin helps (PMID: 12345678).", [12345678]),
        ("Aspirin helps PMID:12345678.", [12345678]),
        ("Aspirin helps (pmid 12345678; PMID 23456789).", [12345678, 23456789]),
        ("as reported in pmid #12345678, 20 patients improved", [12345678]),  # 20 is not a citation
        ("PMID 12345678, PMID 23456789 and PMID 34567890 agree", [12345678, 23456789, 34567890]),
        ("Both [PMID:12345678][PMID:23456789] and again [PMID:12345678].", [12345678, 23456789]),
        ("Aspirin helps [12345678].", [12345678]),  # bare: evidence PMID
        ("Aspirin helps [12345678; 23456789].", [12345678, 23456789]),
        ("Aspirin helps [99999999].", []),  # bare, not evidence: not a citation
        ("Aspirin helps [1] and [2, 3].", []),  # reference numbers are not PMIDs
        ("Aspirin helps [12345678, 2].", []),  # mixed bare group: not a citation
        ("The PMIDs of interest were not given.", []),
        ("no citation at all 12345678", []),
        ("XPMID 12345678", []),  # keyword must be a whole word
        ("[PMID:1234567890]", []),  # 10 digits: not a PMID
    ],
)
def test_cited_pmids(text: str, pmids: list[int]) -> None:
    assert cited_pmids(text, EV) == pmids


def test_positions_cover_the_citation() -> None:
    text = "Claim one (PMID: 12345678). Claim two [PMID:23456789]."
    cs = parse_citations(text, EV)
    assert [text[c.start:c.end] for c in cs] == ["(PMID: 12345678)", "[PMID:23456789]"]
    assert [c.canonical for c in cs] == [False, True]
    assert [c.pmids for c in cs] == [(12345678,), (23456789,)]


def test_bare_numbers_need_evidence() -> None:
    assert cited_pmids("helps [12345678]") == []
    assert cited_pmids("helps [12345678]", {12345678}) == [12345678]


def test_verify_splits_supported_and_unsupported() -> None:
    answer = "A [PMID:12345678]. B [PMID: 11111111; 23456789]. C (PMID 11111111). D [34567890]."
    r = verify(answer, EV)
    assert r.cited == [12345678, 11111111, 23456789, 34567890]
    assert r.supported == [12345678, 23456789, 34567890]
    assert r.unsupported == [11111111]
    assert not r.ok
    assert verify("A [PMID:12345678].", EV).ok
    assert not verify("No citations.", EV).ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A (PMID: 12345678).", "A [PMID:12345678]."),
        ("A [PMID: 12345678; 23456789].", "A [PMID:12345678][PMID:23456789]."),
        ("A pmid 12345678 and [34567890].", "A [PMID:12345678] and [PMID:34567890]."),
        ("A [PMID:12345678] unchanged.", "A [PMID:12345678] unchanged."),
        ("A [1] stays.", "A [1] stays."),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize_citations(text, EV) == expected


@pytest.mark.parametrize("text", ["A (PMID: 12345678) b PMID 2 c [23456789]", "[PMID:1, 2] x pmid:3"])
def test_normalize_is_idempotent_and_keeps_citations(text: str) -> None:
    once = normalize_citations(text, EV)
    assert normalize_citations(once, EV) == once
    assert cited_pmids(once, EV) == cited_pmids(text, EV)
    assert all(c.canonical for c in parse_citations(once, EV))
