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


def test_triton_drafts_set_only_the_draft_runners_backend(tmp_path):
    args = self_draft_server_args(EfficientConfig(draft_attention="triton"), model_dir(tmp_path))
    assert args["speculative_draft_attention_backend"] == "triton"
    assert args["attention_backend"] == "flashinfer"  # the target (verify, K=0) keeps FlashInfer


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


def _write_config(tmp_path, **overrides):
    import json

    from er_verl.models.tiny import SHAPES

    config = {**SHAPES["qwen2.5-0.5b"], "architectures": ["Qwen2ForCausalLM"], **overrides}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_qwen_shapes_pass_the_int4_check(tmp_path):
    from er_verl.engine.server_args import check_int4_shapes, linear_shards
    from er_verl.models.tiny import SHAPES

    check_int4_shapes(_write_config(tmp_path), tp_size=1)
    qwen3 = tmp_path / "qwen3"
    qwen3.mkdir()
    check_int4_shapes(_write_config(qwen3, **SHAPES["qwen3-8b"]), tp_size=2)
    assert linear_shards(SHAPES["qwen2.5-0.5b"]) == {
        "qkv_proj": (1152, 896), "o_proj": (896, 896), "gate_up_proj": (9728, 896), "down_proj": (896, 4864),
    }
    assert linear_shards(SHAPES["qwen3-8b"], 2)["qkv_proj"] == (3072, 4096)


@pytest.mark.parametrize(
    "overrides,tp,needle",
    [
        ({"hidden_size": 960, "num_attention_heads": 15}, 1, r"qkv_proj .*\[N_out, K_in\] = \[1216, 960\]: K_in"),
        ({"intermediate_size": 4800}, 1, r"down_proj .*\[896, 4800\]: K_in"),
        # Qwen2.5-0.5B at TP 2: o_proj's input shard is 448 wide (found writing this test)
        ({}, 2, r"o_proj .*tensor_model_parallel_size=2 .*\[896, 448\]: K_in"),
        ({}, 4, r"qkv_proj .*tensor_model_parallel_size=4 .*\[288, 896\]: N_out"),
    ],
)
def test_shapes_marlin_rejects_are_refused_at_launch_with_what_to_do(tmp_path, overrides, tp, needle):
    path = _write_config(tmp_path, **overrides)
    with pytest.raises(ValueError, match=needle + r".*drafter=fp8, or speculate=False"):
        self_draft_server_args(EfficientConfig(), path, tp_size=tp)
    self_draft_server_args(EfficientConfig(drafter="fp8"), path, tp_size=tp)  # fp8 has no such limit
