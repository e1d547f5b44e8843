"""The answer pipeline core, independent of the API server: question + hits -> prompt messages and the PMIDs
in the prompt; generated text -> the verified citation report (and the decision, for yes/no/maybe scoring).

The server (``/v1/query``, ``/v1/chat/completions``) and the evaluation (``pubmind eval answers``, the re-tune
gate) call the same functions, so an evaluated answer is built exactly like a served one:

    prompt = answer_prompt(question, hits, tokenizer, settings, max_tokens, history)  # before generation
    report = check_answer(text, prompt.in_prompt)                                     # after generation
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from generation.citations import CitationReport, parse_citations, verify
from generation.prompt import (
    DECISION_INSTRUCTION,
    build_messages,
    evidence_room,
    parse_decision,
    render_evidence,
)
from pubmind.errors import InvalidInput
from pubmind.settings import Settings

MIN_EVIDENCE_TOKENS = 32  # below this the question/conversation leaves no useful room for evidence

# The no-retrieval baseline (``pubmind eval answers --no-retrieval``): the model alone, no evidence to cite.
CLOSED_BOOK_SYSTEM = ("You are a biomedical expert. Answer the research question from your own knowledge, "
                      "concisely, and state how certain the answer is.")

__all__ = ["CLOSED_BOOK_SYSTEM", "DECISION_INSTRUCTION", "MIN_EVIDENCE_TOKENS", "AnswerPrompt", "answer_prompt",
           "check_answer", "closed_book_messages", "parse_decision", "prose"]


@dataclass(frozen=True)
class AnswerPrompt:
    """What generation needs, decided before it."""

    messages: list[dict[str, str]]  # OpenAI chat messages (system, history, evidence + question)
    in_prompt: list[int]  # PMIDs whose passages are in the prompt, in prompt order
    evidence_budget: int  # evidence tokens allowed (retrieval.context_tokens capped by the context window)


def answer_prompt(question: str, hits: Sequence[Any], tokenizer: Any, settings: Settings, max_tokens: int,
                  history: Sequence[dict[str, str]] = (), *, decision: bool = False) -> AnswerPrompt:
    """The serving prompt for ``question`` over ``hits`` (search Hits or Articles, best first): the evidence is
    fitted into what ``llm.max_model_len`` leaves after the chat skeleton and ``max_tokens``. ``decision`` adds
    the yes/no/maybe decision-line instruction. InvalidInput when fewer than MIN_EVIDENCE_TOKENS remain."""
    budget, room = evidence_room(tokenizer, question, history, max_model_len=settings.llm.context_len,
                                 max_tokens=max_tokens, context_tokens=settings.retrieval.context_tokens,
                                 decision=decision)
    if budget < MIN_EVIDENCE_TOKENS:
        raise InvalidInput(
            f"the question and conversation leave {max(room, 0)} tokens for evidence within "
            f"llm.max_model_len={settings.llm.context_len} (max_tokens={max_tokens}); shorten the "
            f"conversation or ask for fewer max_tokens", param="messages" if history else "question")
    text, used = render_evidence(hits, tokenizer, budget)
    return AnswerPrompt(build_messages(question, text, history, decision=decision), used, budget)


def check_answer(text: str, in_prompt: Sequence[int]) -> CitationReport:
    """Cited PMIDs of a generated answer, split into supported (in the prompt's evidence) and unsupported."""
    return verify(text, in_prompt)


def closed_book_messages(question: str) -> list[dict[str, str]]:
    """The no-retrieval baseline's messages: the question and the decision-line instruction, no evidence."""
    if not question or not question.strip():
        raise InvalidInput("question must not be empty", param="question")
    return [{"role": "system", "content": CLOSED_BOOK_SYSTEM},
            {"role": "user", "content": f"Question: {question.strip()}\n\n{DECISION_INSTRUCTION}"}]


def prose(text: str) -> str:
    """The answer without its decision lines and citation keys (what ROUGE-L compares with a reference)."""
    text = "\n".join(line for line in text.splitlines() if parse_decision(line) is None)
    out, pos = [], 0
    for c in parse_citations(text):
        out.append(text[pos:c.start])
        pos = c.end
    out.append(text[pos:])
    return " ".join("".join(out).split())
