"""sharing.py on small fake torch modules: what is aliased, what the drafter owns, and materialization."""

import pytest
import torch
from torch import nn

from er_verl.engine.sharing import materialize_, meta_tensors, share_with_target_


class QuantMethod:
    """Stands in for an SGLang quant method; processing repacks ``qweight`` into a new tensor."""

    def process_weights_after_loading(self, layer):
        layer.qweight = nn.Parameter(layer.qweight.data + 7, requires_grad=False)
        layer.workspace = torch.zeros(4, dtype=torch.int32)


class Linear(nn.Module):
    def __init__(self, n, k, quantized: bool, bias: bool = True):
        super().__init__()
        if quantized:
            self.quant_method = QuantMethod()
            self.qweight = nn.Parameter(torch.empty(k, n // 8, dtype=torch.int32), requires_grad=False)
        else:
            self.weight = nn.Parameter(torch.randn(n, k))
        self.bias = nn.Parameter(torch.randn(n)) if bias else None


class Rotary(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("cos_sin_cache", torch.randn(16, 8), persistent=False)


class Layer(nn.Module):
    def __init__(self, quantized: bool):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.proj = Linear(64, 16, quantized)
        self.rotary = Rotary()


class Model(nn.Module):
    def __init__(self, quantized: bool, tied: bool):
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.layers = nn.ModuleList([Layer(quantized) for _ in range(2)])
        self.head = self.embed if tied else nn.Linear(16, 32, bias=False)
        self.stateless = nn.Identity()


def is_quantized(module):
    return isinstance(getattr(module, "quant_method", None), QuantMethod)


def build(tied: bool):
    target = Model(quantized=False, tied=tied)
    with torch.device("meta"):
        draft = Model(quantized=True, tied=tied)
    plan = share_with_target_(draft, target, is_quantized)
    return target, draft, plan


@pytest.mark.parametrize("tied", [True, False])
def test_unquantized_modules_are_the_targets(tied):
    target, draft, plan = build(tied)
    assert draft.embed is target.embed and draft.head is target.head
    assert (draft.head is draft.embed) == tied
    for d, t in zip(draft.layers, target.layers):
        assert d.norm is t.norm and d.rotary is t.rotary
        assert d.proj is not t.proj  # quantized: the drafter's own layer
        assert d.proj.bias is t.proj.bias  # ... whose bias is the target's tensor
    assert "embed" in plan.modules and "head" in plan.modules and "layers.0.norm" in plan.modules
    assert "stateless" not in plan.modules  # no tensors: nothing to share, left alone
    assert len(plan.links) == 2


def test_only_quantized_buffers_are_left_to_the_drafter():
    _, draft, _ = build(tied=True)
    assert meta_tensors(draft) == ["layers.0.proj.qweight", "layers.1.proj.qweight"]


def test_shape_mismatch_is_not_shared():
    target = Model(quantized=False, tied=False)
    target.layers[0].norm = nn.LayerNorm(8)  # a different shape under the same name
    with torch.device("meta"):
        draft = Model(quantized=True, tied=False)
    share_with_target_(draft, target, is_quantized)
    assert draft.layers[0].norm is not target.layers[0].norm
    assert draft.layers[1].norm is target.layers[1].norm
    assert "layers.0.norm.weight" in meta_tensors(draft)


def test_relink_follows_a_rebound_target_tensor():
    target, draft, plan = build(tied=False)
    target.layers[0].proj.bias = nn.Parameter(torch.randn(64))
    assert draft.layers[0].proj.bias is not target.layers[0].proj.bias
    plan.relink_()
    assert draft.layers[0].proj.bias is target.layers[0].proj.bias


def test_materialize_allocates_processes_and_leaves_the_target_alone():
    target, draft, _ = build(tied=True)
    before = {n: t.data_ptr() for n, t in target.named_parameters()}
    owned = materialize_(draft, target, "cpu", is_quantized, lambda m: m.quant_method.process_weights_after_loading(m))
    assert owned == ["layers.0.proj.qweight", "layers.1.proj.qweight"]
    assert meta_tensors(draft) == []
    assert torch.equal(draft.layers[0].proj.qweight, torch.full((16, 8), 7, dtype=torch.int32))  # processed once
    assert {n: t.data_ptr() for n, t in target.named_parameters()} == before


def test_materialize_names_tensors_left_on_meta():
    target, draft, _ = build(tied=True)

    def process(module):  # a processing step that leaves a meta tensor behind
        module.quant_method.process_weights_after_loading(module)
        module.scratch = torch.empty(3, device="meta")

    with pytest.raises(RuntimeError, match=r"layers.0.proj.scratch"):
        materialize_(draft, target, "cpu", is_quantized, process)


def test_links_rebound_by_processing_are_pruned_not_restored():
    """fp8 processing replaces the aliased bf16 weight by the drafter's own: relink must not undo it."""
    target, draft, plan = build(tied=False)

    def process(module):
        module.quant_method.process_weights_after_loading(module)
        module.bias = nn.Parameter(torch.zeros(64), requires_grad=False)  # re-bound: now the drafter's

    materialize_(draft, target, "cpu", is_quantized, process)
    plan.prune_()
    assert plan.links == []
    plan.relink_()
    assert draft.layers[0].proj.bias is not target.layers[0].proj.bias


class Communicator:
    """Like SGLang's LayerCommunicator: a plain object holding the layer's norm module."""

    def __init__(self, norm):
        self.input_layernorm = norm


class LayerWithHelper(nn.Module):
    def __init__(self, quantized: bool):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.proj = Linear(64, 16, quantized)
        self.communicator = Communicator(self.norm)


def test_helper_objects_follow_the_shared_module():
    """Qwen3's LayerCommunicator keeps the draft's own norm unless it is re-pointed (seen on the H200)."""
    target = LayerWithHelper(quantized=False)
    with torch.device("meta"):
        draft = LayerWithHelper(quantized=True)
    share_with_target_(draft, target, lambda m: hasattr(m, "quant_method"))
    assert draft.norm is target.norm
    assert draft.communicator.input_layernorm is target.norm
