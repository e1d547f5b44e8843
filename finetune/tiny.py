"""Build a tiny random-initialised Llama-architecture causal LM with its own tokenizer and chat template.

Used by tests, benchmarks and the CPU quick-start: vLLM, PEFT and transformers load it like any model
directory, so every code path (serving, LoRA loading, training) runs for real without a hub download.
Its answers are noise until a LoRA adapter teaches it something.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "<|end|>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

# Enough text to learn a word-level BPE when the caller passes no corpus.
_FALLBACK = (
    "The retrieved literature does not answer this question. Randomized controlled trial of patients "
    "with cancer, diabetes, heart failure and stroke showed reduced mortality and improved outcomes. "
    "Methods: we measured expression, risk, treatment, therapy, cells, protein, gene, mice and children. "
    "Results: significant association (p < 0.05) with age, women, men, infection and surgery. "
    "Conclusions: yes no maybe. PMID 0 1 2 3 4 5 6 7 8 9 [PMID:12345678]"
)


def build_tiny_causal_lm(
    out_dir: str | Path,
    texts: Iterable[str] = (),
    *,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a tokenizer (BPE trained on ``texts``) and a random LlamaForCausalLM to ``out_dir``.

    head_dim = hidden_size / heads = 64 (a size every vLLM attention backend supports).
    Returns ``out_dir``. Idempotent: an existing complete model directory is left as it is.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    assert hidden_size % heads == 0, f"hidden_size={hidden_size} not divisible by heads={heads}"
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [*list(texts), _FALLBACK]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = max_position_embeddings
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    (out / "pubmind_tiny.json").write_text(json.dumps({"kind": "tiny-random-llama", "seed": seed}))
    return out
