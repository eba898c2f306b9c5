"""Offline models for plumbing and systems runs (no model hub is reachable on the GPU host).

- :func:`build_tokenizer`: a byte-level BPE trained on local text, with ChatML specials and a
  Qwen-style chat template, saved as a ``PreTrainedTokenizerFast``;
- :func:`build_random_model`: a randomly initialised HF causal LM of a named shape whose vocabulary
  is the tokenizer's (so every sampled id decodes).
"""

import os
from typing import Iterable

SHAPES = {
    # Engine tests: hidden 256, 2 layers, 4/2 heads of 64, MLP 512, tied embeddings (the case where
    # SGLang's set_embed_and_head fails). Every Linear is AWQ-Marlin-shaped (N % 64 == 0, K % 128 == 0).
    "tiny": dict(
        model_type="qwen2", hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=512, tie_word_embeddings=True, rope_theta=1e6,
    ),
    # Qwen2.5-0.5B: hidden 896, 24 layers, 14/2 heads, MLP 4864, tied embeddings.
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True, rope_theta=1e6,
    ),
    # The quickstart policy (~20M parameters with a 1k vocabulary), trained by SFT in minutes:
    # hidden 512, 6 layers, 8/2 heads of 64, MLP 1536, tied embeddings; every Linear fits AWQ-Marlin.
    "quickstart": dict(
        model_type="qwen2", hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=2, intermediate_size=1536, tie_word_embeddings=True, rope_theta=1e6,
    ),
    # Qwen3-8B: hidden 4096, 36 layers, 32/8 heads, MLP 12288, untied.
    "qwen3-8b": dict(
        model_type="qwen3", hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=12288, tie_word_embeddings=False, rope_theta=1e6, head_dim=128,
    ),
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str):
    """Train a byte-level BPE of exactly ``vocab_size`` ids on ``texts`` and save it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 512 or vocab_size % 64:
        raise ValueError(f"vocab_size={vocab_size} is invalid: allowed is a multiple of 64 that is >= 512.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    filler = [f"<|reserved_{i}|>" for i in range(vocab_size - tok.get_vocab_size())]
    tok.add_special_tokens(filler)  # pad to exactly vocab_size so model and tokenizer agree
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(out_dir)
    return fast


def build_random_model(shape: str, tokenizer_dir: str, out_dir: str, seed: int = 0, max_positions: int = 4096):
    """Save a randomly initialised bf16 model of ``shape`` with the tokenizer of ``tokenizer_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is unknown: allowed are {sorted(SHAPES)}.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(
        spec.pop("model_type"), vocab_size=len(tokenizer), max_position_embeddings=max_positions,
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16", **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
