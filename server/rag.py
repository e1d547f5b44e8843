"""The answer pipeline shared by ``/v1/query`` and ``/v1/chat/completions``:

retrieve (``IndexHolder`` -> Searcher) -> fit evidence into the context (``generation.prompt``, the same code
training uses) -> pick the model/adapter (registry; loaded into vLLM by ``AdapterDeployer`` on demand) ->
generate (vLLM, whole or streamed) -> verify citations (``generation.citations``; PMIDs not in the prompt are
reported, never presented as sources) -> record provenance (``AnswerStore.record``) -> metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from finetune.registry import AdapterRegistry
from finetune.store import AnswerStore
from generation.answer import answer_prompt, check_answer
from generation.deploy import AdapterDeployer
from generation.vllm_client import ChatDelta, VllmClient, served_base_name
from pubmind.errors import ConfigError, InvalidInput, NotFound
from pubmind.settings import Settings
from pubmind.versions import stack_versions
from retrieval.search import Hit
from retrieval.store import Filters
from server.index_holder import IndexHolder
from server.metrics import Metrics
from server.query.protocol import Citation, Evidence

SEARCH_THREADS = 32  # concurrent searches in worker threads (their query embeddings are batched together)
PROMPT_THREADS = 2  # prompt building (tokenizer counting) in worker threads


def conversation_hash(messages: Sequence[dict[str, str]]) -> str:
    """sha256 of the conversation (roles and texts), so a stored answer can be matched to what was asked
    without keeping the whole history."""
    return hashlib.sha256(json.dumps(list(messages), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def pubmed_url(pmid: int) -> str:
    return f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/"


def hit_citation(hit: Hit) -> Citation:
    return Citation(pmid=int(hit.pmid), title=hit.title or "", journal=hit.journal or "", year=hit.year,
                    url=pubmed_url(int(hit.pmid)), snippet=hit.snippet or "", score=float(hit.score))


def evidence_of(hits: Sequence[Hit], in_prompt: Sequence[int] = ()) -> list[Evidence]:
    used = set(in_prompt)
    return [Evidence(pmid=c.pmid, title=c.title, journal=c.journal, year=c.year, url=c.url, snippet=c.snippet,
                     score=c.score, rank=i + 1, in_prompt=c.pmid in used)
            for i, c in enumerate(hit_citation(h) for h in hits)]


@dataclass
class Searched:
    hits: list[Hit]
    retrieval_ms: float
    index_version: str  # of the generation the hits came from


@dataclass
class Prepared:
    """Everything decided before generation."""

    question: str
    model: str  # what the client asked for
    served: str  # the model name sent to vLLM (base name or NAME@vN)
    adapter: str | None  # NAME@vN, None for the base model
    hits: list[Hit]
    messages: list[dict[str, str]]
    in_prompt: list[int]
    max_tokens: int
    index_version: str | None = None  # of the index the hits came from
    plain: bool = False  # a ':plain' model: the client's own messages, no retrieval, nothing verified or stored
    requester: str | None = None  # the asking key's id ("key:N"), kept with the answer
    filters: dict[str, Any] | None = None  # the search filters, as asked
    conversation_sha256: str | None = None  # of the client's conversation (history + question)
    sampling: dict[str, Any] = field(default_factory=dict)  # what was sent to vLLM (set when generating)
    timings_ms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def evidence(self) -> list[Evidence]:
        return evidence_of(self.hits, self.in_prompt)


@dataclass
class Sampling:
    """Generation parameters sent to vLLM: ``temperature`` (None: llm.temperature) and any other OpenAI
    sampling fields vLLM honours (top_p, stop, seed, penalties, response_format, logprobs, ...)."""

    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answered:
    id: str
    text: str
    citations: list[Citation]
    unsupported: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    timings_ms: dict[str, float]
    logprobs: dict[str, Any] | None = None  # vLLM's, when asked for (non-streamed answers)


class RagService:
    def __init__(self, *, settings: Settings, index: IndexHolder, registry: AdapterRegistry,
                 deployer: AdapterDeployer, vllm: VllmClient, answers: AnswerStore, metrics: Metrics,
                 tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"llm.model={settings.llm.model!r}: its tokenizer has no chat template",
                              param="llm.model")
        self.settings, self.index, self.registry, self.deployer = settings, index, registry, deployer
        self.vllm, self.answers, self.metrics, self.tokenizer = vllm, answers, metrics, tokenizer
        self.base_name = served_base_name(settings.llm)
        self._search_limiter = anyio.CapacityLimiter(SEARCH_THREADS)
        self._prompt_limiter = anyio.CapacityLimiter(PROMPT_THREADS)
        self._stack: dict[str, str | None] | None = None

    # ---- validation -----------------------------------------------------------------------------
    def check_question(self, question: str, param: str = "question") -> str:
        limit = self.settings.server.max_question_chars
        if not question or not question.strip():
            raise InvalidInput(f"{param} must not be empty", param=param)
        if len(question) > limit:
            raise InvalidInput(f"{param} is {len(question)} characters; the limit is {limit} "
                               f"(settings.server.max_question_chars)", param=param)
        return question.strip()

    def check_k(self, k: int | None) -> int:
        kmax = self.settings.retrieval.k_max
        if k is None:
            return min(self.settings.retrieval.k, kmax)
        if not 1 <= k <= kmax:
            raise InvalidInput(f"k must be between 1 and {kmax} (settings.retrieval.k_max), got {k}", param="k")
        return k

    def check_max_tokens(self, max_tokens: int | None, param: str = "max_tokens") -> int:
        limit = self.settings.llm.max_tokens
        if max_tokens is None:
            return limit
        if not 1 <= max_tokens <= limit:
            raise InvalidInput(f"{param} must be between 1 and {limit} (settings.llm.max_tokens), got {max_tokens}",
                               param=param)
        return max_tokens

    def cap_max_tokens(self, max_tokens: int | None) -> int:
        """OpenAI clients' max_tokens: served up to llm.max_tokens (the answer then ends with finish_reason
        'length'), never refused for being large."""
        limit = self.settings.llm.max_tokens
        return limit if max_tokens is None else min(max_tokens, limit)

    # ---- retrieval ------------------------------------------------------------------------------
    async def search(self, question: str, k: int, mode: str | None, filters: Filters | None) -> Searched:
        gen = await self.index.generation()
        mode = mode or self.settings.retrieval.mode
        t0 = time.perf_counter()
        hits = await anyio.to_thread.run_sync(
            lambda: gen.searcher.search(question, k=k, mode=mode, filters=filters), limiter=self._search_limiter)
        dt = time.perf_counter() - t0
        self.metrics.retrieval.observe(dt)
        return Searched(list(hits), dt * 1000, gen.version)

    # ---- model / adapter ------------------------------------------------------------------------
    async def resolve_model(self, model: str | None) -> tuple[str, str | None]:
        """(name to send to vLLM, adapter NAME@vN or None). Loads the adapter version into vLLM if needed."""
        if not model or model in (self.base_name, "base"):
            return self.base_name, None
        try:
            version = await anyio.to_thread.run_sync(self.registry.resolve, model)
        except NotFound as e:
            err = NotFound(f"model {model!r} does not exist: {e.message}; GET /v1/models lists the models",
                           param="model")
            err.code = "model_not_found"
            raise err from None
        await self.deployer.ensure_loaded(version.lora_name, version.path)
        return version.lora_name, version.lora_name

    async def _reload(self, adapter: str) -> None:
        """vLLM restarted or unloaded the adapter meanwhile: load it again."""
        version = await anyio.to_thread.run_sync(self.registry.resolve, adapter)
        await self.deployer.ensure_loaded(version.lora_name, version.path, refresh=True)

    async def prepare(self, question: str, *, k: int | None, mode: str | None, filters: Filters | None,
                      model: str | None, max_tokens: int | None,
                      history: Sequence[dict[str, str]] = (), requester: str | None = None) -> Prepared:
        started = time.perf_counter()
        question = self.check_question(question)
        k = self.check_k(k)
        max_tokens = self.check_max_tokens(max_tokens)
        served, adapter = await self.resolve_model(model)  # 404 for unknown models before any work
        found = await self.search(question, k, mode, filters)
        t0 = time.perf_counter()

        prompt = await anyio.to_thread.run_sync(
            lambda: answer_prompt(question, found.hits, self.tokenizer, self.settings, max_tokens, history),
            limiter=self._prompt_limiter)
        prep = Prepared(question=question, model=model or self.base_name, served=served, adapter=adapter,
                        hits=found.hits, messages=prompt.messages, in_prompt=prompt.in_prompt, max_tokens=max_tokens,
                        started=started, index_version=found.index_version, requester=requester,
                        filters=None if filters is None else msgspec.to_builtins(filters),
                        conversation_sha256=conversation_hash([*history, {"role": "user", "content": question}]))
        prep.timings_ms.update(retrieval=found.retrieval_ms, prompt=(time.perf_counter() - t0) * 1000)
        return prep

    async def prepare_plain(self, messages: list[dict[str, str]], *, model: str, max_tokens: int) -> Prepared:
        """Plain chat through the model or adapter ``model``: the client's messages as they are, no retrieval,
        no evidence (chat UIs' background tasks: titles, tags, follow-up suggestions)."""
        started = time.perf_counter()
        served, adapter = await self.resolve_model(model)
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return Prepared(question=question, model=model, served=served, adapter=adapter, hits=[], messages=messages,
                        in_prompt=[], max_tokens=max_tokens, started=started, plain=True)

    # ---- generation -----------------------------------------------------------------------------
    def _temperature(self, sampling: Sampling) -> float:
        return self.settings.llm.temperature if sampling.temperature is None else sampling.temperature

    def _sent(self, prep: Prepared, sampling: Sampling) -> None:
        prep.sampling = {"temperature": self._temperature(sampling), "max_tokens": prep.max_tokens, **sampling.extra}

    async def generate(self, prep: Prepared, sampling: Sampling | None = None) -> Answered:
        sampling = sampling or Sampling()
        self._sent(prep, sampling)
        t0 = time.perf_counter()

        async def call() -> Any:
            return await self.vllm.chat(prep.messages, prep.served, max_tokens=prep.max_tokens,
                                        temperature=self._temperature(sampling), extra=sampling.extra)

        try:
            result = await call()
        except NotFound:
            if prep.adapter is None:
                raise
            await self._reload(prep.adapter)
            result = await call()
        gen_ms = (time.perf_counter() - t0) * 1000
        ans = await self.finish(prep, result.text, result.finish_reason, result.prompt_tokens,
                                result.completion_tokens, gen_ms)
        ans.logprobs = result.logprobs
        return ans

    async def stream(self, prep: Prepared, sampling: Sampling | None = None) -> AsyncGenerator[ChatDelta, None]:
        """vLLM's deltas (retried once after reloading the adapter if vLLM no longer knows it); the caller then
        calls ``finish`` with the joined text (``StreamRelay``)."""
        sampling = sampling or Sampling()
        self._sent(prep, sampling)
        for attempt in (0, 1):
            started = False
            try:
                async with aclosing(self.vllm.chat_stream(prep.messages, prep.served, max_tokens=prep.max_tokens,
                                                          temperature=self._temperature(sampling),
                                                          extra=sampling.extra)) as deltas:
                    async for d in deltas:
                        started = True
                        yield d
                return
            except NotFound:
                if prep.adapter is None or started or attempt:
                    raise
                await self._reload(prep.adapter)

    async def finish(self, prep: Prepared, text: str, finish_reason: str | None, prompt_tokens: int,
                     completion_tokens: int, gen_ms: float) -> Answered:
        """Verify citations against the evidence in the prompt, record provenance, count metrics."""
        if prep.plain:
            self.count(prep.served, gen_ms, prompt_tokens, completion_tokens)
            return Answered(id=f"plain-{uuid.uuid4().hex[:24]}", text=text, citations=[], unsupported=[],
                            finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens,
                            timings_ms={"generation": gen_ms, "total": (time.perf_counter() - prep.started) * 1000})
        t0 = time.perf_counter()
        report = check_answer(text, prep.in_prompt)
        by_pmid = {int(h.pmid): h for h in prep.hits}
        citations = [hit_citation(by_pmid[p]) for p in report.supported]
        timings = dict(prep.timings_ms, generation=gen_ms, verify=(time.perf_counter() - t0) * 1000)
        timings["total"] = (time.perf_counter() - prep.started) * 1000
        supported = set(report.supported)
        cited = [{"pmid": p, "supported": p in supported} for p in report.cited]
        stack = await self.stack()
        answer_id = await anyio.to_thread.run_sync(lambda: self.answers.record(
            question=prep.question, answer=text, model=prep.model, adapter_version=prep.adapter,
            index_version=prep.index_version, retrieved=[(int(h.pmid), float(h.score)) for h in prep.hits],
            citations=cited, timings_ms=timings, requester=prep.requester, filters=prep.filters,
            sampling=prep.sampling, conversation_sha256=prep.conversation_sha256, stack=stack,
            finish_reason=finish_reason))
        self.count(prep.served, gen_ms, prompt_tokens, completion_tokens)
        self.metrics.unsupported.inc(len(report.unsupported))
        return Answered(id=answer_id, text=text, citations=citations, unsupported=list(report.unsupported),
                        finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens, timings_ms=timings)

    async def stack(self) -> dict[str, str | None]:
        """Library versions recorded with every answer (read once; vLLM's from the server that answers)."""
        if self._stack is None:
            self._stack = await anyio.to_thread.run_sync(
                lambda: stack_versions(vllm_url=self.vllm.base_url, vllm_python=self.settings.llm.vllm_python))
        return self._stack

    def count(self, served: str, gen_ms: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.generation.labels(served).observe(gen_ms / 1000)
        self.metrics.tokens.labels("prompt", served).inc(prompt_tokens)
        self.metrics.tokens.labels("completion", served).inc(completion_tokens)


async def primed(agen: AsyncGenerator[ChatDelta, None]) -> AsyncGenerator[ChatDelta, None]:
    """Wait for the first delta before the response starts, so vLLM being down or rejecting the request is an
    HTTP error (503/4xx) instead of a 200 stream that fails."""
    try:
        first: ChatDelta | None = await agen.__anext__()
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncGenerator[ChatDelta, None]:
        async with aclosing(agen):  # closing this closes vLLM's stream: vLLM aborts the request
            if first is not None:
                yield first
                async for d in agen:
                    yield d

    return rest()


def search_id() -> str:
    """Id of a search-only response (not stored: nothing was generated)."""
    return f"search-{uuid.uuid4().hex[:24]}"


class StreamRelay:
    """Passes a stream's text deltas through to the client while tallying text, finish reason and token counts;
    ``finish()`` then verifies and records the answer (``RagService.finish``). Shared by /v1/query (SSE) and
    /v1/chat/completions (OpenAI chunks), which differ only in how they frame each piece."""

    def __init__(self, rag: RagService, prep: Prepared, deltas: AsyncIterator[ChatDelta]) -> None:
        self.rag, self.prep, self.deltas = rag, prep, deltas
        self.started = time.perf_counter()
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self.done = False

    @classmethod
    async def start(cls, rag: RagService, prep: Prepared, sampling: Sampling | None = None) -> StreamRelay:
        """Starts generating; vLLM errors before the first delta raise here (an HTTP error, not a broken stream)."""
        return cls(rag, prep, await primed(rag.stream(prep, sampling)))

    async def texts(self) -> AsyncIterator[str]:
        async for d in self.deltas:
            if d.text:
                self.parts.append(d.text)
                yield d.text
            self.finish_reason = d.finish_reason or self.finish_reason
            if d.prompt_tokens is not None:
                self.prompt_tokens = d.prompt_tokens
            if d.completion_tokens is not None:
                self.completion_tokens = d.completion_tokens

    async def finish(self) -> Answered:
        self.done = True
        return await self.rag.finish(self.prep, "".join(self.parts), self.finish_reason, self.prompt_tokens,
                                     self.completion_tokens, (time.perf_counter() - self.started) * 1000)

    async def abandon(self, reason: str) -> None:
        """The stream ended before ``finish`` (the client went away, or vLLM failed midway): close vLLM's stream
        (vLLM aborts the request) and record what was generated with ``reason`` as its finish reason
        (``client_disconnected``, ``error``). Shielded: it runs while the response task is being cancelled."""
        if self.done:
            return
        self.done = True
        with anyio.CancelScope(shield=True):
            close = getattr(self.deltas, "aclose", None)
            if close is not None:
                await close()
            await self.rag.finish(self.prep, "".join(self.parts), reason, self.prompt_tokens,
                                  self.completion_tokens, (time.perf_counter() - self.started) * 1000)
