"""The self-drafter against the real installed SGLang, on the CPU (each probe in a fresh interpreter).

* plugin: with ER_VERL_ENGINE=1, SGLang's plugin loader applies every er_verl hook; STANDALONE creates
  our worker classes; our ServerArgs kwargs survive SGLang's processing; SGLang's real weight updater
  sends each of the five paths to the target exactly once and marks the drafter dirty each time.
* build: tiny Qwen2 (tied embeddings, qkv bias) and Qwen3 (untied, q/k norms) self-drafters built on
  meta own exactly their int4 buffers; everything else is the target's module or tensor.
"""

import json
import os
import subprocess
import sys

import pytest

PROBE = os.path.join(os.path.dirname(__file__), "sglang_probe.py")
UPDATER = "sglang.srt.managers.scheduler_components.weight_updater.SchedulerWeightUpdaterManager"


def run_probe(mode: str) -> dict:
    env = {**os.environ, "ER_VERL_ENGINE": "1", "ER_VERL_SELF_DRAFT": "1"}
    proc = subprocess.run([sys.executable, PROBE, mode], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def plugin():
    pytest.importorskip("sglang")
    return run_probe("plugin")


@pytest.fixture(scope="module")
def built():
    pytest.importorskip("sglang")
    return run_probe("build")


def test_every_hook_applies_to_the_installed_classes(plugin):
    assert plugin["unpatched"] == [], plugin["unpatched"]
    assert plugin["worker_replaced"] and plugin["draft_worker_replaced"]
    assert plugin["create_worker"] == "SelfSpecWorkerV2"
    assert plugin["loader_hooked"] and plugin["pools_hooked"]
    assert plugin["routing_from_mixin"]


def test_server_args_survive_sglang_processing(plugin):
    assert plugin["server_args"] == {
        "speculative_algorithm": "STANDALONE", "speculative_num_steps": 5, "speculative_eagle_topk": 1,
        "speculative_num_draft_tokens": 6, "speculative_draft_model_path": None,
        "speculative_draft_model_quantization": "awq_marlin", "speculative_adaptive": False,
        "max_running_requests": 64, "enable_draft_weights_cpu_backup": False, "load_format": "auto",
        "max_speculative_num_draft_tokens": 6,
    }


def test_each_update_path_reaches_the_target_once_and_marks_the_drafter_dirty(plugin):
    assert plugin["success"] == [True] * 5
    assert plugin["target_calls"] == [
        ["target", "update_weights_from_tensor"], ["target", "update_weights_from_ipc"],
        ["target", "update_weights_from_distributed"], ["target", "update_weights_from_disk"],
    ]  # resume restores the target's own buffers; there is nothing to route
    assert plugin["dirty"] is True
    assert plugin["pending"] == ["tensor", "ipc", "distributed", "disk", "resume"]


LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
OWNED = sorted(f"model.layers.{i}.{lin}.{buf}" for i in range(2) for lin in LINEARS for buf in ("qweight", "sz"))


@pytest.mark.parametrize("case", ["qwen2_tied", "qwen3_untied", "llama_untied"])
def test_drafter_owns_only_its_int4_buffers(built, case):
    out = built[case]
    assert out["quantization"] == "awq_marlin" and out["kind"] == "int4"
    assert out["owned"] == OWNED, f"drafter-owned tensors: {out['owned']}"
    assert out["quantized_layers"] == [f"model.layers.{i}.{lin}" for i in range(2) for lin in LINEARS]
    assert out["target_untouched"], "building the drafter re-bound a target tensor"


def test_tied_qwen2_shares_embedding_head_norms_rotary_and_biases(built):
    out = built["qwen2_tied"]
    assert out["lm_head_is_target_lm_head"] and out["lm_head_is_embed"]
    assert out["rotary_shared"] and out["norm_shared"]
    assert out["links"] == ["QKVParallelLinear.bias"] * 2  # the qkv biases of both layers
    assert {"model.embed_tokens", "lm_head", "model.norm"} <= set(out["shared_modules"])


def test_untied_qwen3_shares_its_own_lm_head_and_qk_norms(built):
    out = built["qwen3_untied"]
    assert out["lm_head_is_target_lm_head"] and not out["lm_head_is_embed"]
    assert {"model.layers.0.self_attn.q_norm", "model.layers.1.self_attn.k_norm", "lm_head"} <= set(out["shared_modules"])
    assert out["links"] == []
    assert out["communicator_norms_shared"] == [True] * 4


def test_fp8_drafter_links_the_bf16_weights_it_will_quantize(built):
    """fp8: nothing is owned on meta; processing quantizes the linked target weights into new buffers."""
    out = built["qwen3_fp8"]
    assert out["quantization"] == "fp8" and out["kind"] == "fp8"
    assert out["owned"] == [] and out["target_untouched"]
    assert sorted(out["links"]) == sorted(
        ["QKVParallelLinear.weight", "RowParallelLinear.weight", "MergedColumnParallelLinear.weight",
         "RowParallelLinear.weight"] * 2
    )
    assert out["quantized_layers"] == [f"model.layers.{i}.{lin}" for i in range(2) for lin in LINEARS]
