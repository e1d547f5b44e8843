"""server.ui.render: Markdown of answers and notes is sanitised; citations become numbered markers."""

from __future__ import annotations

from server.ui.render import answer_html, citation_numbers, highlight, markdown, query_terms, sanitize


def test_script_in_a_note_is_escaped() -> None:
    assert "<script" not in markdown("<script>alert(1)</script>")


def test_raw_html_image_is_not_rendered() -> None:
    assert "<img" not in markdown('<img src=x onerror="alert(1)">')


def test_sanitiser_drops_event_handlers() -> None:
    assert "onclick" not in sanitize('<a href="#x" onclick="alert(1)">y</a>')


def test_javascript_link_is_not_a_link() -> None:
    assert 'href="javascript' not in str(markdown("[x](javascript:alert(1))"))


def test_markdown_formatting_survives() -> None:
    assert "<strong>bold</strong>" in markdown("**bold**")


def test_supported_citation_links_to_its_card() -> None:
    html = str(answer_html("Yes [PMID:11].", [11, 12]))
    assert 'href="#ev-11"' in html


def test_unsupported_citation_is_flagged() -> None:
    html = str(answer_html("Yes [PMID:99].", [11]))
    assert 'class="cite unsupported"' in html


def test_markers_are_numbered_in_order_of_first_citation() -> None:
    assert citation_numbers("a [PMID:12] b [PMID:11] c [PMID:12]", [11, 12]) == {12: 1, 11: 2}


def test_script_in_an_answer_is_escaped() -> None:
    html = str(answer_html("<script>alert(1)</script> [PMID:11]", [11]))
    assert "<script" not in html


def test_placeholder_text_cannot_forge_a_marker() -> None:
    html = str(answer_html("pmcite0x0x [PMID:11]", [11]))
    assert html.count("<sup>") == 1


def test_highlight_escapes_before_marking() -> None:
    out = str(highlight("<b>mitochondria</b>", query_terms("mitochondria?")))
    assert out == "&lt;b&gt;<mark>mitochondria</mark>&lt;/b&gt;"
