"""er_verl.draft.quantize against a float64 reference and against SGLang's own (numpy) helpers."""

import importlib.util
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch

from er_verl.draft import quantize as Q

SHAPES = [(64, 128), (192, 256), (512, 1024), (1536, 384)]  # (N_out, K_in)
G = 128


def _weight(n: int, k: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:  # [N, K]
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.02).to(dtype)


def _codes(rows: int, cols: int, num_bits: int = 4, seed: int = 0) -> torch.Tensor:  # [rows, cols] int32
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << num_bits, (rows, cols), generator=g, dtype=torch.int32)


def _adversarial_weight() -> torch.Tensor:  # [64, 1024]: one special pattern per group of 128 inputs
    w = _weight(64, 1024, seed=1)
    w[:, 0:128] = 0.0  # all-zero group
    w[:, 128:256] = 0.5  # constant positive group
    w[:, 256:384] = -w[:, 256:384].abs() - 0.1  # all negative, away from zero
    w[:, 384:512] *= 1e-7  # range below the 1e-5 clamp
    w[:, 512:640] = w[:, 512:640].abs() + 3.0  # all positive, large offset
    w[:, 640:768] *= 1000.0  # large magnitude
    w[0, 768] = 5.0  # one outlier in a normal group
    return w


@pytest.fixture(scope="module")
def sg():
    """SGLang's reference helpers (CPU import, ~7 s once) and a real `uint4` ScalarType."""
    pytest.importorskip("sglang")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sglang.srt.layers.quantization import marlin_utils, utils
    # sgl_kernel cannot import without libcuda; its scalar_type module is pure Python.
    path = pathlib.Path(importlib.util.find_spec("sgl_kernel").origin).with_name("scalar_type.py")
    spec = importlib.util.spec_from_file_location("_sgl_scalar_type", path)
    scalar_type = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scalar_type)
    return type("SG", (), {"u": utils, "m": marlin_utils, "uint4": scalar_type.scalar_types.uint4})


# ---------------------------------------------------------------- RTN vs float64


def _check_half_step(w: torch.Tensor, q, s, z) -> None:
    n, k = w.shape
    assert q.shape == (k, n) and s.shape == z.shape == (k // G, n)
    assert q.dtype == z.dtype == torch.uint8
    assert int(q.max()) <= 15 and int(z.max()) <= 15
    s64 = s.double().repeat_interleave(G, 0)  # [K, N]
    deq64 = (q.double() - z.double().repeat_interleave(G, 0)) * s64
    err = (w.double().t() - deq64).abs()
    assert bool((err <= s64 / 2 * (1 + 1e-5)).all()), f"max err/step = {float((err / s64).max())}"


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rtn_error_within_half_step(n, k, dtype):
    w = _weight(n, k, dtype=dtype)
    q, s, z = Q.rtn_int4(w, G)
    assert s.dtype == dtype
    _check_half_step(w, q, s, z)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_rtn_error_within_half_step_on_degenerate_groups(scale_dtype):
    w = _adversarial_weight()
    q, s, z = Q.rtn_int4(w, G, scale_dtype=scale_dtype)
    _check_half_step(w, q, s, z)
    assert int(z[1].max()) == 0 and int(q[128:256].min()) == 15  # constant 0.5 is exactly the top code


def test_rtn_codes_equal_float64_rounding():
    w = _weight(512, 1024, dtype=torch.bfloat16)
    q, s, z = Q.rtn_int4(w, G)
    w64, s64 = w.double().t(), s.double().repeat_interleave(G, 0)
    grouped = w64.unflatten(0, (-1, G))  # [K/G, G, N]
    lo = grouped.amin(1).clamp(max=0)
    z64 = torch.round(-lo / s.double()).clamp(0, 15)
    ratio = w64 / s64
    q64 = (torch.round(ratio) + z64.repeat_interleave(G, 0)).clamp(0, 15)
    near_tie = ((ratio - ratio.floor()) - 0.5).abs() < 1e-5  # fp32 vs fp64 division may differ only here
    assert torch.equal(z.double(), z64)
    assert bool(((q.double() == q64) | near_tie).all())


def test_bf16_scale_is_rounded_up():
    w = _weight(256, 512)
    s32 = Q.rtn_int4(w, G, scale_dtype=torch.float32)[1]
    s16 = Q.rtn_int4(w, G, scale_dtype=torch.bfloat16)[1]
    assert bool((s16.float() >= s32).all()) and bool((s16.float() < s32 * (1 + 2**-7)).all())


@pytest.mark.parametrize("n,k", SHAPES)
def test_rtn_bit_identical_to_sglang_quantize_weights(sg, n, k):
    w = _weight(n, k, seed=n + k)
    q, s, z = Q.rtn_int4(w, G, scale_dtype=torch.float32)
    w_ref, q_ref, s_ref, z_ref = sg.u.quantize_weights(w.t().contiguous(), sg.uint4, G, zero_points=True)
    assert torch.equal(q.int(), q_ref) and torch.equal(s, s_ref) and torch.equal(z.int(), z_ref)
    assert torch.equal(Q.dequantize_int4(q, s, z).t(), w_ref)


def test_dequantize_returns_linear_layout():
    w = _weight(192, 256)
    q, s, z = Q.rtn_int4(w, G)
    deq = Q.dequantize_int4(q, s, z, dtype=torch.bfloat16)
    assert deq.shape == (192, 256) and deq.dtype == torch.bfloat16
    expected = (q.float() - z.float().repeat_interleave(G, 0)) * s.repeat_interleave(G, 0)  # [K, N]
    assert torch.equal(deq, expected.t().bfloat16())


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("num_bits", [4, 8])
@pytest.mark.parametrize("n,k", SHAPES)
def test_pack_cols_round_trip_and_matches_sglang(sg, num_bits, n, k):
    q = _codes(k, n, num_bits, seed=k)
    packed = Q.pack_cols(q, num_bits)
    assert packed.shape == (k, n * num_bits // 32) and packed.dtype == torch.int32
    assert torch.equal(Q.unpack_cols(packed, num_bits), q)
    assert torch.equal(packed, sg.u.pack_cols(q, num_bits, k, n))
    assert torch.equal(Q.unpack_cols(packed, num_bits), sg.u.unpack_cols(packed, num_bits, k, n))


@pytest.mark.parametrize("n,k", SHAPES)
def test_pack_awq_round_trip_and_layout(sg, n, k):
    q = _codes(k, n, seed=n)
    packed = Q.pack_awq(q.to(torch.uint8))
    assert torch.equal(Q.unpack_awq(packed), q)
    reordered = q.reshape(-1, 8)[:, list(Q.AWQ_ORDER)].reshape(k, n)
    assert torch.equal(packed, sg.u.pack_cols(reordered, 4, k, n))
    for i, col in enumerate(Q.AWQ_ORDER):  # nibble i of word 0 holds column AWQ_ORDER[i]
        assert torch.equal((packed[:, 0] >> (4 * i)) & 15, q[:, col])


# ---------------------------------------------------------------- Marlin layout


def test_scale_perms_are_sglangs(sg):
    perm, single = sg.m.get_scale_perms()
    s = torch.arange(64.0).reshape(1, 64)
    assert Q.marlin_permute_scales(s, 256, 64, 128).flatten().long().tolist() == perm
    assert Q.marlin_permute_scales(s, 128, 64, 128).flatten().long().tolist() == single + [32 + i for i in single]


@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("n,k", SHAPES)
def test_marlin_permute_scales_matches_sglang(sg, group_size, n, k):
    groups = 1 if group_size == -1 else k // group_size
    s = _weight(groups, n, seed=groups).bfloat16()
    ours = Q.marlin_permute_scales(s, k, n, group_size)
    assert torch.equal(ours, sg.m.marlin_permute_scales(s, k, n, group_size)) and ours.is_contiguous()


@pytest.mark.parametrize("num_bits", [4, 8])
@pytest.mark.parametrize("n,k", SHAPES)
def test_zero_points_match_sglang(sg, num_bits, n, k):
    groups = k // G
    zp = _codes(groups, n, num_bits, seed=groups + n)
    direct = Q.marlin_zero_points(zp, groups, n, num_bits)
    assert torch.equal(direct, sg.m.marlin_zero_points(zp, groups, n, num_bits))
    awq_packed = Q.pack_cols(Q._interleave(zp, num_bits), num_bits)
    ours = Q.awq_to_marlin_zero_points(awq_packed, groups, n, num_bits)
    assert torch.equal(ours, sg.m.awq_to_marlin_zero_points(awq_packed, groups, n, num_bits))
    assert torch.equal(ours, direct)


# ---------------------------------------------------------------- fp8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_round_trip_error_bound(dtype):
    w = _weight(256, 512, dtype=dtype)
    w[3] = 0.0  # an all-zero row must not divide by zero
    w[4, :7] = torch.tensor([1e-9, -1e-8, 3.0, -2.0, 0.0, 1e-30, 7.0])
    q, s = Q.quantize_fp8_per_channel(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape and s.shape == (256,)
    w64, s64 = w.double(), s.double().unsqueeze(1)
    assert torch.allclose(s64, (w64.abs().amax(1, keepdim=True).clamp(min=1e-10) / 448.0), rtol=1e-6)
    assert float(q.float().abs().max()) <= 448.0 and torch.isfinite(q.float()).all()
    err = (w64 - Q.dequantize_fp8(q, s, torch.float64)).abs()
    bound = torch.maximum(w64.abs() * 2.0**-4, s64 * 2.0**-10) * (1 + 1e-5)  # 3-bit mantissa; subnormals
    assert bool((err <= bound).all())


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: Q.rtn_int4(torch.zeros(64, 100)), r"K_in = 100 .* group_size = 128"),
        (lambda: Q.rtn_int4(torch.zeros(64, 256), group_size=0), r"group_size = 0"),
        (lambda: Q.rtn_int4(torch.zeros(64, 128, 2)), r"2-D floating-point \[N_out, K_in\]"),
        (lambda: Q.rtn_int4(torch.zeros(64, 128, dtype=torch.int32)), r"dtype torch.int32"),
        (lambda: Q.rtn_int4(torch.zeros(64, 128), scale_dtype=torch.int8), r"scale_dtype = torch.int8"),
        (lambda: Q.check_marlin_shape(100, 256, 128), r"N_out = 100 .* multiple of 64"),
        (lambda: Q.check_marlin_shape(128, 200, 128), r"K_in = 200 .* multiple of 128"),
        (lambda: Q.check_marlin_shape(128, 256, 96), r"group_size = 96 .* allowed: \(32, 64, 128\)"),
        (lambda: Q.pack_awq(torch.zeros(128, 12, dtype=torch.int32)), r"multiple of 8; got shape \(128, 12\)"),
        (lambda: Q.pack_cols(torch.zeros(128, 64, dtype=torch.int32), 3), r"num_bits = 3 .* 4 or 8"),
        (lambda: Q.unpack_cols(torch.zeros(4, 4)), r"2-D int32"),
        (lambda: Q.dequantize_int4(*_mismatched_qsz()), r"\[K/G, N\]"),
        (lambda: Q.marlin_permute_scales(torch.zeros(2, 96), 256, 96, 128), r"size_n = 96"),
        (lambda: Q.marlin_zero_points(torch.zeros(2, 64), 4, 64), r"\[4, 64\]"),
        (lambda: Q.awq_to_marlin_zero_points(torch.zeros(2, 4, dtype=torch.int32), 2, 64), r"\[2, 8\]"),
        (lambda: Q.quantize_fp8_per_channel(torch.zeros(8)), r"2-D floating-point"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _mismatched_qsz():
    q, s, z = Q.rtn_int4(torch.zeros(64, 256))
    return q, s, z[:1]


def test_modules_import_without_sglang():
    code = (
        "import sys, er_verl.draft.quantize, er_verl.draft.marlin; "
        "assert not [m for m in sys.modules if m.startswith('sglang')], 'sglang imported'"
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ---------------------------------------------------------------- marlin.py glue, repack kernel stubbed


def _fake_marlin_layer(n: int, k: int) -> torch.nn.Module:
    """The attributes and final buffer shapes of a processed AWQ-Marlin layer, on the CPU."""
    layer = torch.nn.Module()
    layer.input_size_per_partition, layer.output_size_per_partition, layer.num_groups = k, n, k // G
    for name, shape, dtype in [
        ("qweight", (k // 16, 2 * n), torch.int32),
        ("scales", (k // G, n), torch.bfloat16),
        ("qzeros", (k // G, n // 8), torch.int32),
    ]:
        layer.register_parameter(name, torch.nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False))
    return layer


@pytest.mark.parametrize("n,k", SHAPES)
def test_requantize_linear_writes_in_place(sg, monkeypatch, n, k):
    from sglang.jit_kernel import awq_marlin_repack as repack_module

    from er_verl.draft import marlin

    def fake_repack(b_q_weight, size_k, size_n, num_bits):  # same element count as the real output
        assert b_q_weight.shape == (size_k, size_n // 8) and num_bits == 4
        return b_q_weight.reshape(size_k // 16, 2 * size_n) + 0

    monkeypatch.setattr(repack_module, "awq_marlin_repack", fake_repack)
    layer = _fake_marlin_layer(n, k)
    ptrs = {name: t.data_ptr() for name, t in marlin.marlin_buffers(layer).items()}
    w = _weight(n, k, seed=5, dtype=torch.bfloat16)
    marlin.requantize_linear_(layer, w)
    assert ptrs == {name: t.data_ptr() for name, t in marlin.marlin_buffers(layer).items()}
    q, s, z = Q.rtn_int4(w, G)

    def awq(x):  # SGLang's numpy pack_cols on AWQ-reordered columns
        return sg.u.pack_cols(x.int().reshape(-1, 8)[:, list(Q.AWQ_ORDER)].reshape(x.shape), 4, *x.shape)

    assert torch.equal(layer.qweight, awq(q.contiguous()).reshape(k // 16, 2 * n))
    assert torch.equal(layer.scales, sg.m.marlin_permute_scales(s, k, n, G))
    assert torch.equal(layer.qzeros, sg.m.awq_to_marlin_zero_points(awq(z), k // G, n, 4))
    with pytest.raises(ValueError, match=r"w has shape \(1, 1\)"):
        marlin.requantize_linear_(layer, torch.zeros(1, 1))
