"""The drafter's Marlin-call wrapper on the CPU, with a fake GEMM."""

import pytest
import torch

from er_verl.engine.marlin_apply import MarlinApply, install, marlin_mode


class Inner:
    extra = "kept"

    def apply(self, layer, x, bias=None):
        return "sglang"


class Layer:
    def __init__(self):
        self.qweight = self.scales = self.qzeros = self.g_idx = self.g_idx_sort_indices = self.workspace = None
        self.input_size_per_partition, self.output_size_per_partition = 4, 3
        self.quant_method = Inner()


class Entry:
    def __init__(self, layer):
        self.layer = layer


def test_modes_pick_the_reduction_and_keep_shapes():
    calls = []

    def gemm(a, c, *rest, size_m, size_n, size_k, use_atomic_add, use_fp32_reduce, is_zp_float):
        calls.append((size_m, size_n, size_k, use_atomic_add, use_fp32_reduce))
        return torch.ones(size_m, size_n)

    layer = Layer()
    x = torch.zeros(2, 5, 4)
    assert MarlinApply(Inner(), "fp32").apply(layer, x) == "sglang"
    out = MarlinApply(Inner(), "atomic", gemm, "u4").apply(layer, x, bias=torch.tensor([1.0, 2.0, 3.0]))
    assert out.shape == (2, 5, 3) and out[0, 0].tolist() == [2.0, 3.0, 4.0]
    MarlinApply(Inner(), "bf16", gemm, "u4").apply(layer, x)
    assert calls == [(10, 3, 4, True, False), (10, 3, 4, False, False)]
    assert MarlinApply(Inner(), "bf16").extra == "kept"  # everything else is the wrapped method's


def test_install_wraps_int4_layers_once_and_env_is_checked():
    layers = [Entry(Layer()), Entry(Layer())]
    fp8 = Entry(type("Fp8", (), {"quant_method": Inner()})())
    assert install(layers + [fp8], "fp32") == 0
    assert install(layers + [fp8], "bf16") == 2 and install(layers, "bf16") == 0
    assert isinstance(layers[0].layer.quant_method, MarlinApply) and isinstance(fp8.layer.quant_method, Inner)
    assert marlin_mode({}) == "fp32" and marlin_mode({"ER_VERL_MARLIN_REDUCE": "atomic"}) == "atomic"
    with pytest.raises(ValueError, match="expected one of"):
        marlin_mode({"ER_VERL_MARLIN_REDUCE": "fast"})
