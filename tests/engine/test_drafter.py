"""SelfDrafter's lazy requant protocol, failure handling, byte count and fp8 requant, on the CPU."""

import logging

import pytest
import torch
from torch import nn

from er_verl.draft.quantize import quantize_fp8_per_channel
from er_verl.engine.drafter import DraftLinear, SelfDrafter, requant_fn_for, requantize_fp8_
from er_verl.engine.sharing import SharingPlan

from layers import Fp8Layer  # noqa: E402 - tests/engine helper module


class Target(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4, bias=False)
        self.b = nn.Linear(8, 4, bias=False)


class Layer(nn.Module):
    """A drafter layer that stores ``2 · w`` in place (stands in for a quantized copy)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("q", torch.zeros(4, 8))
        self.workspace = torch.zeros(16, dtype=torch.int32)


def double_(layer, w):
    layer.q.copy_(2 * w)


def make(requant=double_):
    target = Target()
    model = nn.Module()
    model.a, model.b = Layer(), Layer()
    model.shared = target.a  # a module the drafter shares with the target
    drafter = SelfDrafter(model, "int4", SharingPlan(), target=target)
    drafter.layers = [DraftLinear("a", model.a, requant), DraftLinear("b", model.b, requant)]
    return target, drafter


def test_first_refresh_requantizes_from_the_current_target():
    target, drafter = make()
    seen = []
    drafter.listeners.append(lambda d, ok, sources, s: seen.append((ok, sources)))
    assert drafter.is_dirty and not drafter.ready
    assert drafter.refresh(target) is True
    assert torch.equal(drafter.model.a.q, 2 * target.a.weight.detach())
    assert seen == [(True, ["build"])] and not drafter.is_dirty and drafter.num_requants == 1


def test_many_updates_requantize_once_and_only_when_dirty():
    target, drafter = make()
    calls = []
    drafter.layers[0].requant = lambda layer, w: calls.append(w)
    drafter.refresh(target)
    for source in ("tensor", "tensor", "resume"):
        drafter.mark_dirty(source)
    seen = []
    drafter.listeners.append(lambda d, ok, sources, s: seen.append(sources))
    drafter.refresh(target)
    drafter.refresh(target)  # clean: nothing to do
    assert len(calls) == 2 and seen == [["tensor", "tensor", "resume"]]


def test_requant_reads_a_rebound_target_weight_and_keeps_buffer_addresses():
    target, drafter = make()
    drafter.refresh(target)
    ptr = drafter.model.a.q.data_ptr()
    target.a.weight = nn.Parameter(torch.ones(4, 8))  # a weight update that re-binds the Parameter
    drafter.mark_dirty("tensor")
    drafter.refresh(target)
    assert torch.equal(drafter.model.a.q, torch.full((4, 8), 2.0))
    assert drafter.model.a.q.data_ptr() == ptr


def test_failed_requant_warns_disables_and_recovers_at_the_next_update(caplog):
    target, drafter = make()
    drafter.refresh(target)
    broken = [True]

    def flaky(layer, w):
        if broken[0]:
            raise ValueError("bad shard")
        double_(layer, w)

    drafter.layers[1].requant = flaky
    seen = []
    drafter.listeners.append(lambda d, ok, sources, s: seen.append(ok))
    drafter.mark_dirty("tensor")
    with caplog.at_level(logging.WARNING):
        assert drafter.refresh(target) is False
    assert "requant failed" in caplog.text and "bad shard" in caplog.text
    assert not drafter.ready and not drafter.is_dirty  # no retry at every step
    assert drafter.refresh(target) is False and seen == [False]
    broken[0] = False
    drafter.mark_dirty("tensor")
    assert drafter.refresh(target) is True and drafter.ready and seen == [False, True]


def test_failing_listener_does_not_fail_the_requant():
    target, drafter = make()
    drafter.listeners.append(lambda *a: 1 / 0)
    assert drafter.refresh(target) is True


def test_num_bytes_counts_only_drafter_owned_tensors():
    target, drafter = make()
    owned = drafter.owned_tensors(target)
    assert sorted(owned) == ["a.q", "a.workspace", "b.q", "b.workspace"]  # shared.weight is the target's
    assert drafter.num_bytes(target) == drafter.num_bytes() == 2 * (4 * 8 * 4 + 16 * 4)
    assert drafter.requantize_() >= 0.0  # the target it was built from is the default


def test_forward_runs_the_draft_runner():
    _, drafter = make()
    with pytest.raises(RuntimeError, match="no draft ModelRunner"):
        drafter.forward(object())
    drafter.runner = type("Runner", (), {"forward": lambda self, fb: type("Out", (), {"logits_output": ("logits", fb)})()})()
    assert drafter.forward("batch") == ("logits", "batch")


def test_fp8_requant_is_in_place_and_matches_the_reference():
    layer, w = Fp8Layer(64, 128), torch.randn(64, 128) * 0.02
    ptrs = (layer.weight.data_ptr(), layer.weight_scale.data_ptr())
    requantize_fp8_(layer, w)
    q, s = quantize_fp8_per_channel(w)
    assert torch.equal(layer.weight.t().contiguous().view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(layer.weight_scale.view(-1), s)
    assert (layer.weight.data_ptr(), layer.weight_scale.data_ptr()) == ptrs
    with pytest.raises(ValueError, match="per-channel requant"):
        requantize_fp8_(layer, torch.randn(32, 128))


def test_requant_kind_is_detected_from_the_processed_layer():
    awq = nn.Module()
    awq.qweight, awq.workspace = torch.zeros(1), torch.zeros(1)
    awq.input_size_per_partition, awq.num_groups = 256, 2
    assert requant_fn_for(awq)[0] == "int4"
    assert requant_fn_for(Fp8Layer(64, 128))[0] == "fp8"
    decode = nn.Module()
    decode.qweight, decode.sz = torch.zeros(16, 16, dtype=torch.int32), torch.zeros(16, 1, dtype=torch.int32)
    kind, fn = requant_fn_for(decode)
    w = torch.randn(16, 128)
    fn(decode, w)  # CPU: the torch reference path, into the same buffers
    assert kind == "int4" and decode.qweight.abs().sum() > 0
    with pytest.raises(ValueError, match="neither int4"):
        requant_fn_for(nn.Linear(4, 4))


def test_a_quantized_target_cannot_be_the_source():
    target = nn.Module()
    target.proj = nn.Module()
    target.proj.weight = torch.zeros(64, 128, dtype=torch.int8)
    drafter = SelfDrafter(nn.Module(), "fp8", SharingPlan(), target=target)
    drafter.model.proj = Fp8Layer(64, 128)
    with pytest.raises(ValueError, match="target layer proj has weight torch.int8"):
        drafter.bind_layers(["proj"])
