"""checks.ReportWriter on the CPU with an fp8 drafter of a fake target (int4 needs the Marlin GEMM)."""

import json

import torch
from torch import nn

from er_verl.engine.checks import ReportWriter, kv_sharing, rtn_mismatches, unshared_tensors
from er_verl.engine.drafter import SelfDrafter, requantize_fp8_
from er_verl.engine.sharing import SharingPlan

from layers import Fp8Layer  # noqa: E402 - tests/engine helper module


def setup():
    target = nn.Module()
    target.proj = nn.Linear(128, 64, bias=False)
    target.norm = nn.LayerNorm(128)
    draft = nn.Module()
    draft.proj, draft.norm = Fp8Layer(64, 128), target.norm
    drafter = SelfDrafter(draft, "fp8", SharingPlan(modules=["norm"]))
    drafter.bind_layers(["proj"])
    pool = object()
    target_runner = type("R", (), {"model": target, "token_to_kv_pool": pool, "req_to_token_pool": 1,
                                    "token_to_kv_pool_allocator": 2, "max_total_num_tokens": 10})()
    drafter.runner = type("D", (), {"token_to_kv_pool": pool, "req_to_token_pool": 1,
                                    "token_to_kv_pool_allocator": 2, "max_total_num_tokens": 10})()
    return target, drafter, target_runner


def test_report_line_after_a_requant(tmp_path):
    target, drafter, target_runner = setup()
    path = tmp_path / "r.jsonl"
    drafter.listeners.append(ReportWriter(str(path), target_runner))
    assert drafter.refresh(target)
    line = json.loads(path.read_text().splitlines()[0])
    assert line["errors"] == {}, line["errors"]
    assert line["ok"] and line["sources"] == ["build"] and line["kind"] == "fp8"
    assert line["rtn"] == {"layers_checked": 1, "mismatched": [], "max_abs_diff": 0.0, "buffers_mismatched": []}
    assert line["sharing"]["not_shared"] == [] and line["sharing"]["num_shared"] == 2  # norm weight + bias
    assert line["kv"]["kv_pool_shared"] and line["kv"]["allocator_shared"]
    assert sorted(line["buffer_ptrs"]) == ["proj.weight", "proj.weight_scale"]
    assert line["drafter_bytes"] == 64 * 128 + 64 * 4 and line["target_weight_bytes"] == 4 * (64 * 128 + 2 * 128)


def test_checks_see_a_stale_layer_and_an_unshared_copy():
    target, drafter, target_runner = setup()
    requantize_fp8_(drafter.model.proj, target.proj.weight.detach())
    with torch.no_grad():
        target.proj.weight.mul_(2)  # the target moved on; the drafter was not requantized
    assert rtn_mismatches(drafter, target)["mismatched"] == ["proj"]
    drafter.model.norm = nn.LayerNorm(128)  # a copy instead of the target's module
    assert sorted(unshared_tensors(drafter.model, target)["not_shared"]) == ["norm.bias", "norm.weight"]
    drafter.runner.token_to_kv_pool = object()
    assert kv_sharing(drafter.runner, target_runner)["kv_pool_shared"] is False


def test_a_raising_check_is_recorded_not_lost(tmp_path):
    target, drafter, target_runner = setup()
    class Broken:
        @property
        def token_to_kv_pool(self):
            raise RuntimeError("pool gone")

    drafter.runner = Broken()  # kv_sharing raises
    path = tmp_path / "r.jsonl"
    drafter.listeners.append(ReportWriter(str(path), target_runner))
    drafter.refresh(target)
    line = json.loads(path.read_text())
    assert line["kv"] is None and "pool gone" in line["errors"]["kv"] and line["rtn"]["mismatched"] == []
