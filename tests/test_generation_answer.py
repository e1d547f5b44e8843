"""The server-independent answer core (``generation.answer``) and the decision line of the shared prompt."""

from __future__ import annotations

from typing import Any

import pytest

from generation.answer import answer_prompt, check_answer, closed_book_messages, prose
from generation.prompt import DECISION_INSTRUCTION, build_messages, parse_decision
from pubmind.errors import InvalidInput


@pytest.mark.parametrize(("text", "want"), [
    ("Statins help [PMID:1].\nDecision: yes", "yes"),
    ("**Decision:** No.", "no"),
    ("Decision - maybe", "maybe"),
    ("Decision: yes\nOn reflection...\nDecision: no", "no"),  # the last decision line counts
    ("Yes, statins help.", None),  # prose is never guessed from: unparseable
    ("Decisions: yesterday", None),
])
def test_parse_decision(text: str, want: str | None) -> None:
    assert parse_decision(text) == want


def test_decision_instruction_only_when_asked() -> None:
    assert build_messages("Q?", "ev", decision=True)[-1]["content"].endswith(DECISION_INSTRUCTION)
    assert DECISION_INSTRUCTION not in build_messages("Q?", "ev")[-1]["content"]


def test_answer_prompt_is_the_serving_prompt_plus_decision(settings: Any, tiny_tokenizer: Any,
                                                           ft_articles: list[Any]) -> None:
    p = answer_prompt("Do statins help?", ft_articles[:3], tiny_tokenizer, settings, 32, decision=True)
    assert p.in_prompt == [a.pmid for a in ft_articles[:3]]
    assert p.messages[-1]["content"].endswith(DECISION_INSTRUCTION)
    assert f"[PMID:{ft_articles[0].pmid}]" in p.messages[-1]["content"]
    assert p.evidence_budget == settings.retrieval.context_tokens


def test_answer_prompt_refuses_when_no_room_for_evidence(settings: Any, tiny_tokenizer: Any,
                                                        ft_articles: list[Any]) -> None:
    with pytest.raises(InvalidInput) as e:
        answer_prompt("Do statins help?", ft_articles[:1], tiny_tokenizer, settings,
                      settings.llm.max_model_len - 40)
    assert e.value.param == "question"


def test_check_answer_flags_citations_outside_the_evidence() -> None:
    r = check_answer("A [PMID:1]. B [PMID:7].", [1, 2])
    assert r.supported == [1]
    assert r.unsupported == [7]


def test_closed_book_has_no_evidence_and_asks_for_a_decision() -> None:
    msgs = closed_book_messages("Do statins help?")
    assert "Evidence" not in msgs[-1]["content"]
    assert msgs[-1]["content"].endswith(DECISION_INSTRUCTION)


def test_prose_drops_decision_line_and_citation_keys() -> None:
    assert prose("Statins help [PMID:1][PMID:2].\n\nDecision: yes") == "Statins help ."
