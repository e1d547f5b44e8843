"""Evidence rendering, system prompt and chat messages: the ONE code path shared by serving (server) and
training-data construction (finetune), so a tuned adapter sees exactly the prompts it is served with."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from pubmind.errors import InvalidInput
from pubmind.records import Article
from retrieval.hydrate import Hit

INSUFFICIENT = "The retrieved literature does not answer this question."
TRUNCATED = " [...truncated]"
MIN_TRUNCATED_TOKENS = 16  # a cut passage keeps at least this many text tokens, else it is left out

SYSTEM_PROMPT = (
    "You are a biomedical literature assistant. Answer the question using ONLY the evidence passages "
    "below, each introduced by its key such as [PMID:12345678]. Put the key of the supporting passage "
    "right after each claim, e.g. \"Statins lower LDL cholesterol [PMID:12345678].\"; cite several "
    "passages as [PMID:1][PMID:2]. Never cite a PMID that is not in the evidence and never use outside "
    "knowledge. Be concise and state the strength and limits of the evidence. If the evidence is "
    f"insufficient to answer, reply exactly: \"{INSUFFICIENT}\""
)

# Yes/no/maybe questions (PubMedQA scoring, ``pubmind eval answers``): the model is also asked for a decision
# line, appended to the user message by ``build_messages(..., decision=True)``; ``parse_decision`` reads it.
DECISIONS = ("yes", "no", "maybe")
DECISION_INSTRUCTION = ('End with a last line that is exactly "Decision: yes", "Decision: no" or '
                        '"Decision: maybe": your overall answer to the question.')
_DECISION_LINE = re.compile(r"^[\W_]*decision[\W_]*(yes|no|maybe)\b", re.IGNORECASE | re.MULTILINE)


def parse_decision(text: str) -> str | None:
    """``yes``/``no``/``maybe`` from the last decision line of ``text`` (``Decision: no``, ``**Decision:** no``);
    None when there is none (an unparseable answer: scored as wrong, never guessed from the prose)."""
    found = _DECISION_LINE.findall(text)
    return found[-1].lower() if found else None


@runtime_checkable
class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


TokenCounter = _Tokenizer | Callable[[str], int]


def _counter(tok: TokenCounter) -> Callable[[str], int]:
    if isinstance(tok, _Tokenizer):  # HF tokenizers are callable too: check encode first
        enc = tok
        return lambda s: len(enc.encode(s, add_special_tokens=False))
    if callable(tok):
        return tok
    raise InvalidInput(f"tokenizer_or_counter must have .encode or be callable, got {type(tok).__name__}",
                       param="tokenizer_or_counter")


def _parts(item: Article | Hit) -> tuple[int, str, str]:
    """(pmid, header, body) of an Article or a search Hit (anything with pmid/title/journal/year/snippet)."""
    if isinstance(item, Article):
        body = item.abstract_text
    elif hasattr(item, "snippet"):
        body = item.snippet
    else:
        raise InvalidInput(f"evidence items must be Article or Hit, got {type(item).__name__}", param="hits")
    meta = ", ".join(str(x) for x in (item.journal, item.year) if x)
    title = " ".join((item.title or "(untitled)").split())
    header = f"[PMID:{item.pmid}] {title}" + (f" ({meta})" if meta else "")
    return item.pmid, header, " ".join(body.split())


def render_evidence(hits_or_articles: Sequence[Article | Hit], tokenizer_or_counter: TokenCounter,
                    budget_tokens: int) -> tuple[str, list[int]]:
    """Evidence text (passages in the given order, separated by blank lines) within ``budget_tokens``, and
    the PMIDs it contains. The first passage that does not fit whole is cut at a word boundary and marked
    with ``TRUNCATED`` (or left out if too little room remains); rendering stops there."""
    if budget_tokens <= 0:
        raise InvalidInput(f"budget_tokens must be >= 1, got {budget_tokens}", param="budget_tokens")
    count = _counter(tokenizer_or_counter)
    # Each passage is tokenised alone (linear in the evidence, not quadratic); a cut passage is searched on
    # its own words. Counts of pieces add up to the whole's count up to merges across the joins, which the
    # final check catches.
    pieces: list[str] = []
    used: list[int] = []
    total = 0
    for item in hits_or_articles:
        pmid, header, body = _parts(item)
        if pmid in used:
            continue
        sep = "\n\n" if pieces else ""
        n = count(f"{sep}{header}\n{body}")
        if total + n <= budget_tokens:
            pieces.append(f"{sep}{header}\n{body}")
            used.append(pmid)
            total += n
            continue
        room, words = budget_tokens - total, body.split(" ")
        lo, hi = 0, len(words)  # largest word prefix that fits with the marker: binary search
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(f"{sep}{header}\n{' '.join(words[:mid])}{TRUNCATED}") <= room:
                lo = mid
            else:
                hi = mid - 1
        cut = " ".join(words[:lo])
        if lo and count(cut) >= MIN_TRUNCATED_TOKENS:
            pieces.append(f"{sep}{header}\n{cut}{TRUNCATED}")
            used.append(pmid)
        break
    text = "".join(pieces)
    while pieces and count(text) > budget_tokens:  # a join merged tokens past the budget: drop the last
        pieces.pop()
        used.pop()
        text = "".join(pieces)
    return text, used


def user_message(question: str, evidence_text: str, decision: bool = False) -> str:
    text = f"Evidence:\n{evidence_text.strip() or '(no passages retrieved)'}\n\nQuestion: {question.strip()}"
    return f"{text}\n\n{DECISION_INSTRUCTION}" if decision else text


def build_messages(question: str, evidence_text: str,
                   history: Sequence[dict[str, str]] | None = None, *,
                   decision: bool = False) -> list[dict[str, str]]:
    """OpenAI chat messages: system prompt, earlier turns (user/assistant), then evidence + question (+ the
    decision-line instruction when ``decision``)."""
    if not question or not question.strip():
        raise InvalidInput("question must not be empty", param="question")
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    for i, turn in enumerate(history or ()):
        if turn.get("role") not in ("user", "assistant") or not isinstance(turn.get("content"), str):
            raise InvalidInput(f"history[{i}] must be {{'role': 'user'|'assistant', 'content': str}}, "
                               f"got {turn!r:.200}", param="history")
        msgs.append({"role": turn["role"], "content": turn["content"]})
    msgs.append({"role": "user", "content": user_message(question, evidence_text, decision)})
    return msgs


PROMPT_SLACK_TOKENS = 16  # evidence tokenised alone vs. inside the chat template can differ by a few tokens


def evidence_room(tokenizer: Any, question: str, history: Sequence[dict[str, str]] | None, *,
                  max_model_len: int, max_tokens: int, context_tokens: int,
                  decision: bool = False) -> tuple[int, int]:
    """The evidence token budget for one prompt: ``context_tokens``, capped by what the context window leaves
    after the chat template's skeleton (system prompt, history, question) and the answer's ``max_tokens``.
    Returns (budget, room); ``room`` may be < budget or negative when the conversation is too long.
    Serving and training both call this, so a trained example is the prompt it will be served with."""
    skeleton = tokenizer.apply_chat_template(build_messages(question, "", history, decision=decision), tokenize=False,
                                             add_generation_prompt=True)
    room = max_model_len - max_tokens - len(tokenizer.encode(skeleton, add_special_tokens=False)) - PROMPT_SLACK_TOKENS
    return min(context_tokens, room), room
