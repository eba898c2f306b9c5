"""self_draft_server_args / self_draft_env: plain kwargs, no sglang import (SGLang's own processing of
them is checked in test_self_draft_sglang.py)."""

import json
import subprocess
import sys

import pytest

from er_verl.config import EfficientConfig
from er_verl.engine.server_args import (
    FLASHINFER_WORKSPACE_BYTES,
    check_self_draft_model,
    self_draft_env,
    self_draft_server_args,
)


def model_dir(tmp_path, arch="Qwen3ForCausalLM"):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    return str(tmp_path)


def test_int4_default_from_max_draft_len(tmp_path):
    args = self_draft_server_args(EfficientConfig(max_draft_len=7), model_dir(tmp_path))
    assert args == {
        "speculative_algorithm": "STANDALONE",
        "speculative_draft_model_path": None,  # no draft path: no per-token KV scaling
        "speculative_draft_model_quantization": "awq_marlin",
        "speculative_num_steps": 7,
        "speculative_eagle_topk": 1,
        "speculative_num_draft_tokens": 8,
        "enable_draft_weights_cpu_backup": False,
        "attention_backend": "flashinfer",
    }


def test_fp8_drafter_and_max_running_requests(tmp_path):
    args = self_draft_server_args(EfficientConfig(drafter="fp8", max_draft_len=1), model_dir(tmp_path), 256)
    assert args["speculative_draft_model_quantization"] == "fp8"
    assert (args["speculative_num_steps"], args["speculative_num_draft_tokens"]) == (1, 2)
    assert args["max_running_requests"] == 256


def test_unsupported_architecture_is_refused_with_a_sentence(tmp_path):
    with pytest.raises(ValueError, match=r"does not support Qwen3MoeForCausalLM .*efficient.speculate=False"):
        self_draft_server_args(EfficientConfig(), model_dir(tmp_path, "Qwen3MoeForCausalLM"))


def test_hub_ids_and_config_less_dirs_are_checked_later(tmp_path):
    check_self_draft_model("Qwen/Qwen3-8B")
    check_self_draft_model(str(tmp_path))


def test_env():
    assert self_draft_env() == {
        "ER_VERL_SELF_DRAFT": "1",
        "SGLANG_FLASHINFER_WORKSPACE_SIZE": str(FLASHINFER_WORKSPACE_BYTES),
        "SGLANG_ENABLE_OVERLAP_PLAN_STREAM": "0",
    }


def test_module_imports_no_sglang():
    code = "import sys, er_verl.engine.server_args, er_verl.engine.plugin; print(any(m.startswith('sglang') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
