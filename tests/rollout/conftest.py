import os

import pytest

GSM8K = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "gsm8k")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A small BPE tokenizer with a chat template, trained offline (as on the GPU host)."""
    from er_verl.models.tiny import build_tokenizer

    texts = ["Natalia sold 48 clips in April and half as many in May. #### 72"] * 50 + [str(i) for i in range(200)]
    out = str(tmp_path_factory.mktemp("tok"))
    build_tokenizer(texts, 512, out)
    return out
