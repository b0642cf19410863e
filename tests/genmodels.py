"""A tiny causal LM built in the tests (no hub): a seeded random-initialized 2-layer Llama (hidden size 32) with a
byte-level BPE tokenizer trained in code with ``tokenizers``, saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "the fleet serves models from a queue",
    "workers batch requests and reply through redis",
    "a tiny language model writes short texts",
    "tokens stream to the caller as they are made",
    "hello world, how are you today?",
] * 4
PROMPTS = ["the fleet", "hello world", "a tiny language model writes", "tokens"]


def tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on CORPUS (``<s>`` begins a text, ``</s>`` ends one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS, trainer)
    bos = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def llama(directory: Path, seed: int = 0) -> tuple[Path, Any, Any]:
    """A seeded random-initialized tiny Llama and its tokenizer saved into ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory, model, tok


def greedy(model: Any, tok: Any, prompt: str, max_new_tokens: int) -> list[int]:
    """``generate()`` in-process, greedy: the new token ids (up to and without the end-of-sequence token)."""
    import torch

    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
