"""``server.chat.render``: PubMed links for evidence PMIDs only, and a stream linked piece by piece gives exactly
the text linked whole, however the model's deltas are split."""

from __future__ import annotations

import random

import pytest

from server.chat.render import StreamLinker, link_pmids, url_citations

EVIDENCE = {21645374, 111, 333, 555, 9, 11}
TEXTS = [
    "Mitochondria are involved [PMID:21645374] and also (PMID: 111; 222). See PMID 333, PMID 444 and pmid #555.",
    "Bare [21645374] cites; [1, 2] does not. PMID:7 in PMID 8 patients. [PMID: 9, 10][PMID:11]",
    "No citations at all here. (parenthetical) [bracket] PM PMI PMIDS",
    "Ends with a cite [PMID:21645374]",
    "Ends with a partial [PMID:2164",
]


def test_links_only_evidence_pmids() -> None:
    out = link_pmids(TEXTS[0], EVIDENCE)
    assert out.startswith("Mitochondria are involved [PMID:21645374](https://pubmed.ncbi.nlm.nih.gov/21645374/)")
    assert "[PMID:111](https://pubmed.ncbi.nlm.nih.gov/111/), [PMID:222]." in out
    assert "[PMID:444] and" in out


def test_url_citations_span_the_links() -> None:
    content = link_pmids(TEXTS[3], EVIDENCE) + "\n\nReferences:\n- [T](https://pubmed.ncbi.nlm.nih.gov/1/)"
    (note,) = url_citations(content, {21645374: "Lace plant PCD"}, end=content.index("\n\n"))
    span = note["url_citation"]
    assert content[span["start_index"]:span["end_index"]] == "[PMID:21645374](https://pubmed.ncbi.nlm.nih.gov/21645374/)"
    assert span["title"] == "Lace plant PCD"


@pytest.mark.parametrize("text", TEXTS)
def test_stream_linked_equals_whole(text: str) -> None:
    rng = random.Random(0)
    whole = link_pmids(text, EVIDENCE)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(0, 12)))
        parts = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        linker = StreamLinker(EVIDENCE)
        assert "".join(linker.feed(p) for p in parts) + linker.close() == whole, parts


def test_stream_releases_text_before_the_end() -> None:
    linker = StreamLinker(EVIDENCE)
    assert linker.feed("Mitochondria are involved ") == "Mitochondria are involved "
    assert linker.feed("[PMID:2164") == ""  # could still become a citation
    assert linker.feed("5374] in PCD.") == "[PMID:21645374](https://pubmed.ncbi.nlm.nih.gov/21645374/) in PCD."
