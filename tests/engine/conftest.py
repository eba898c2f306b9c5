"""Shared by the engine GPU tests: a tiny random model built offline."""

import os

import pytest


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny random Qwen2 (tied embeddings, vocab 512) with an offline BPE tokenizer."""
    from er_verl.models.tiny import build_random_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    texts = [f"{i} plus {i + 1} is {2 * i + 1}. The quick brown fox jumps over the lazy dog." for i in range(3000)]
    build_tokenizer(texts, 512, str(root / "tok"))
    return build_random_model("tiny", str(root / "tok"), str(root / "model"), seed=0)


@pytest.fixture(scope="module")
def peaked_model_path(model_path, tmp_path_factory):
    """The tiny model with its (tied) embeddings ×SCALE: logits ~×SCALE, so a few tokens dominate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path_factory.mktemp("peaked") / "model")
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.bfloat16)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(float(os.environ.get("ER_VERL_TEST_PEAK", "6")))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
    return out
