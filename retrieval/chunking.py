"""Article -> passages for the embedder and BM25.

A chunk is the title (if ``include_title``) plus a run of abstract sentences; section labels are kept
("METHODS: ..."). Abstracts that do not fit in ``max_tokens`` embedder tokens (special tokens and the
title prefix included) are split on sentence boundaries with ``overlap_sentences`` sentences repeated
between consecutive chunks. Chunk ids are stable: ``pmid * 1000 + seq``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from pubmind.records import Article, single_spaced
from pubmind.settings import ChunkingSettings

MAX_CHUNKS_PER_ARTICLE = 1000
WORD_CACHE_MAX = 1 << 20  # words whose token counts are remembered (~100 MB at most); cleared when full
log = logging.getLogger("pubmind.ingest")


class Chunk(msgspec.Struct, frozen=True, gc=False):
    chunk_id: int  # pmid * 1000 + seq
    pmid: int
    seq: int
    text: str


def make_chunk_id(pmid: int, seq: int) -> int:
    assert 0 <= seq < MAX_CHUNKS_PER_ARTICLE, f"seq must be in [0, 1000), got {seq} for PMID {pmid}"
    return pmid * MAX_CHUNKS_PER_ARTICLE + seq


def pmid_of(chunk_id: int) -> int:
    return chunk_id // MAX_CHUNKS_PER_ARTICLE


class Tokenizer(Protocol):
    """The slice of a Hugging Face fast tokenizer the chunker uses."""

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...

    def num_special_tokens_to_add(self, pair: bool = False) -> int: ...


# Sentence ends at . ! ? (optionally followed by a closing quote/bracket) before whitespace and an
# upper-case letter, digit or opening bracket. Abbreviations that commonly precede capitals are re-joined.
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9(\[])")
_ABBREV = re.compile(
    r"(?:\b(?:e\.g|i\.e|et al|vs|Fig|Figs|Dr|Mr|Mrs|Ms|Prof|No|approx|ca|cf|Ref|St|Inc|Ltd|Co|Jr|Sr)\.|\b[A-Z]\.)$"
)

_ABBREV_TAIL = 12  # > the longest abbreviation ("approx.") + the character before it (for \b)


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (keeps the text of every sentence; whitespace between them is dropped)."""
    out: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        piece = text[start : m.start()]
        if _ABBREV.search(piece.rstrip("\"')]")[-_ABBREV_TAIL:]):  # the tail holds any match + 1 char
            continue  # "et al. Smith" / "e.g. Foo": not a boundary
        end = m.start() + len(m.group(0).rstrip())  # keep a closing quote/bracket with its sentence
        out.append(text[start:end].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


# Tokenizer parts under which a text's token count is the sum of its space-separated words' counts:
# normalizers that map characters one by one, pre-tokenizers that split at every space (a word never
# joins its neighbour), and models that encode each pre-token alone (Hugging Face ``tokenizers``).
_PER_CHAR_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
_SPLITTING_PRE = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits", "ByteLevel",
                  "Metaspace"}


def _word_additive(config: dict[str, Any]) -> bool:
    """True if ``tokenizer.json``'s pipeline counts a single-spaced text as the sum of its words."""
    def parts(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
        return [] if node is None else node[key] if node.get("type") == "Sequence" else [node]

    norms = parts(config.get("normalizer"), "normalizers")
    pres = parts(config.get("pre_tokenizer"), "pretokenizers")
    model = config.get("model") or {}
    return (all(n.get("type") in _PER_CHAR_NORMALIZERS for n in norms)
            and bool(pres) and all(p.get("type") in _SPLITTING_PRE for p in pres)
            and all(p.get("use_regex", True) for p in pres if p.get("type") == "ByteLevel")
            and all(p.get("split", True) for p in pres if p.get("type") == "Metaspace")
            and model.get("type") in {"WordPiece", "BPE", "Unigram"} and not model.get("dropout")
            and not any(" " in t.get("content", " ") for t in config.get("added_tokens") or []))


class _Rust:
    """A Rust ``tokenizers.Tokenizer`` in the shape of the transformers wrapper, as far as ``Chunker`` uses it
    (it calls the Rust tokenizer itself: ``backend_tokenizer``); ``special``: the wrapper's count."""

    def __init__(self, backend: Any, special: int) -> None:
        self.backend_tokenizer, self._special = backend, special

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        raise AssertionError("Chunker calls the Rust tokenizer (backend_tokenizer) directly")

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        assert not pair, "chunks are single sequences"
        return self._special


class Chunker:
    """Token-aware chunker bound to one tokenizer and chunking settings; ``chunk_many`` batches the
    tokenizer calls for many articles (the store calls it once per transaction)."""

    def __init__(self, tokenizer: Tokenizer, settings: ChunkingSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        # Content tokens available per chunk: max_tokens minus [CLS]/[SEP] (or the model's equivalent).
        self.budget = settings.max_tokens - tokenizer.num_special_tokens_to_add()
        assert self.budget >= 8, f"chunking.max_tokens={settings.max_tokens} leaves no room for text"
        # A private copy of the Rust tokenizer without padding/truncation (tokenizer.json may configure
        # them; the transformers wrapper toggles them per call, so the shared object is not usable directly).
        backend: Any = getattr(tokenizer, "backend_tokenizer", None)  # tokenizers.Tokenizer (untyped here)
        self._backend: Any = None
        self._words: dict[str, int] | None = None  # word -> token count, where counts add up by word
        if hasattr(backend, "encode_batch_fast"):
            self._backend = type(backend).from_str(backend.to_str())
            self._backend.no_padding()
            self._backend.no_truncation()
            if _word_additive(json.loads(backend.to_str())):
                self._words = {}
            else:
                log.info("chunking: this tokenizer's counts are not additive by word; every sentence is tokenized")

    def portable(self) -> tuple[Any, ...]:
        """What another process needs to rebuild this chunker (``Chunker.rebuild``): with a Rust tokenizer,
        its JSON and the special-token count, so that the process does not import transformers to unpickle
        the wrapper (~1 s, while the parent, writing the pickle to it, waits); otherwise the tokenizer."""
        if self._backend is None:
            return ("wrapper", self.tokenizer, self.settings)
        return ("rust", self._backend.to_str(), self.settings.max_tokens - self.budget, self.settings)

    @classmethod
    def rebuild(cls, spec: tuple[Any, ...]) -> Chunker:
        """The chunker ``portable()`` described: the same chunks from the same articles."""
        if spec[0] == "wrapper":
            return cls(spec[1], spec[2])
        kind, tokenizer_json, special, settings = spec
        assert kind == "rust", f"unknown chunker spec {kind!r}"
        from tokenizers import Tokenizer as RustTokenizer

        return cls(_Rust(RustTokenizer.from_str(tokenizer_json), special), settings)

    def _count(self, texts: list[str]) -> list[int]:
        """Token counts (no special tokens) of single-spaced texts as they appear after a space inside a
        chunk. With a word-additive tokenizer, the sum of the cached counts of the texts' words (each as
        " word"): only unseen words go through the tokenizer (PubMed's words repeat: ~10x fewer calls)."""
        if not texts:
            return []
        if self._words is not None:
            words, split = self._words, [t.split(" ") for t in texts]
            counts: list[int] = []
            miss: list[int] = []  # texts with a word not cached yet (few, once the cache is warm)
            get = words.__getitem__
            for i, ws in enumerate(split):
                try:
                    counts.append(sum(map(get, ws)))
                except KeyError:
                    counts.append(-1)
                    miss.append(i)
            if miss:
                new = list({w for i in miss for w in split[i] if w not in words})
                if len(words) + len(new) > WORD_CACHE_MAX:  # start afresh with this call's words
                    words.clear()
                    new = list({w for ws in split for w in ws})
                    miss = list(range(len(split)))
                for w, n in zip(new, self._count_full(new), strict=True):
                    words[w] = n
                for i in miss:
                    counts[i] = sum(map(get, split[i]))
            return counts
        return self._count_full(texts)

    def _count_full(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` (each after a space) from the tokenizer itself."""
        if not texts:
            return []
        spaced = [" " + t for t in texts]
        if self._backend is not None:  # Rust tokenizer directly: ~2x faster than the transformers wrapper
            return [len(e.ids) for e in self._backend.encode_batch_fast(spaced, add_special_tokens=False)]
        return [len(e) for e in self.tokenizer(spaced, add_special_tokens=False)["input_ids"]]

    def _cut(self, text: str, max_tokens: int) -> list[str]:
        """Hard-split one over-long sentence at token boundaries into pieces of <= max_tokens tokens."""
        if self._backend is not None:  # the Rust tokenizer directly: the wrapper costs ~0.3 ms a call
            offsets = self._backend.encode(text, add_special_tokens=False).offsets
        else:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        pieces = []
        for i in range(0, len(offsets), max_tokens):
            window = offsets[i : i + max_tokens]
            end = offsets[i + max_tokens][0] if i + max_tokens < len(offsets) else len(text)
            pieces.append(text[window[0][0] : end].strip())
        return [p for p in pieces if p]

    def chunk_many(self, articles: Sequence[Article]) -> list[list[Chunk]]:
        """Chunks for each article (same order); an article with neither title nor abstract gets []."""
        s = self.settings
        titles = [single_spaced(a.title) for a in articles]
        # Sentence units per article; the first sentence of a labelled section carries its label.
        units: list[list[str]] = []
        for a in articles:
            u: list[str] = []
            for sec in a.abstract:
                sents = split_sentences(single_spaced(sec.text))
                if sents and sec.label:
                    sents[0] = f"{sec.label}: {sents[0]}"
                u.extend(sents)
            units.append(u)
        flat = [t for u in units for t in u]
        counts_flat = self._count(flat + [t for t in titles if t and s.include_title])
        title_counts = iter(counts_flat[len(flat) :])
        out: list[list[Chunk]] = []
        pos = 0
        for a, title, u in zip(articles, titles, units, strict=True):
            tok = counts_flat[pos : pos + len(u)]
            pos += len(u)
            prefix = title if s.include_title else ""
            ptok = next(title_counts) if prefix else 0
            if prefix and ptok > self.budget // 2:  # pathological title: keep its first half-budget tokens
                prefix = self._cut(prefix, self.budget // 2)[0]
                ptok = self._count([prefix])[0]
            out.append(self._pack(a.pmid, prefix, ptok, u, tok, title))
        return out

    def _pack(self, pmid: int, prefix: str, ptok: int, units: list[str], tok: list[int], title: str) -> list[Chunk]:
        avail = self.budget - ptok  # tokens left for abstract sentences in each chunk
        if not units:
            return [Chunk(make_chunk_id(pmid, 0), pmid, 0, title)] if title else []
        # Pre-split sentences that alone exceed the budget.
        if max(tok) > avail:
            split_units: list[str] = []
            for t, n in zip(units, tok, strict=True):
                window = avail
                while n > avail:  # re-counted pieces can exceed the window by a token or two (BPE merges)
                    pieces = self._cut(t, window)
                    if max(self._count(pieces)) <= avail:
                        break
                    window -= max(1, window // 10)
                    assert window > 0, f"PMID {pmid}: cannot split a sentence under {avail} tokens"
                split_units.extend(pieces if n > avail else [t])
            units, tok = split_units, self._count(split_units)
            assert max(tok) <= avail, f"PMID {pmid}: could not split a sentence under {avail} tokens"
        sep = "\n" if prefix else ""
        groups: list[list[str]] = []
        i, n = 0, len(units)
        while i < n:
            j, used = i, 0
            while j < n and used + tok[j] <= avail:
                used += tok[j]
                j += 1
            groups.append(units[i:j])
            if j == n:
                break
            nxt = max(j - self.settings.overlap_sentences, i + 1)
            while nxt < j and sum(tok[nxt:j]) + tok[j] > avail:  # overlap must leave room for news
                nxt += 1
            i = nxt
        return [
            Chunk(make_chunk_id(pmid, seq), pmid, seq, prefix + sep + " ".join(g)) for seq, g in enumerate(groups)
        ]

    def __call__(self, article: Article) -> list[Chunk]:
        return self.chunk_many([article])[0]
