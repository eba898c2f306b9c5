"""er_verl.draft.fused: the one-pass Triton RTN/AWQ kernel is bit-identical to the torch reference.

CPU: the kernel runs in the Triton interpreter. Triton 3.6 decides "interpreted or compiled" for
each @triton.jit function when it is decorated, i.e. for triton's own tl.min/tl.sum/... once, at
`import triton`, from TRITON_INTERPRET; setting the variable inside this module would be too late
when anything imported triton first (and would turn every later Triton kernel of a GPU session
into the interpreter). So `fused` interprets its kernel body explicitly for CPU tensors (it uses
only builtins), and `test_env_var_interpreter_subprocess` checks the TRITON_INTERPRET=1 route in a
fresh process. Shapes are small: the interpreter costs ~10 ms per [BLOCK_N, G] tile.

GPU (`gpu` marker): bit-equality at Qwen3-8B shapes against the torch path on the same GPU, the
whole-layer requant against the torch path when sglang is importable, and a timing print.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from er_verl.draft import fused as F
from er_verl.draft import quantize as Q

G = 128
SHAPES = [(64, 128), (192, 384), (128, 256), (320, 128)]  # (N_out, K_in); K == 128: single group
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _weight(n: int, k: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:  # [N, K]
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.02).to(dtype)


def _special_weight(dtype=torch.float32) -> torch.Tensor:  # [64, 1280]: one pattern per group of 128
    w = _weight(64, 1280, seed=1)
    w[:, 0:128] = 0.0  # all zero
    w[:, 128:256] = 0.5  # constant positive
    w[:, 256:384] = -w[:, 256:384].abs() - 0.1  # all negative, away from zero
    w[:, 384:512] *= 1e-7  # range below the 1e-5 clamp (fp16: subnormal scales)
    w[:, 512:640] = w[:, 512:640].abs() + 3.0  # all positive, large offset
    w[:, 640:768] *= 1000.0  # large magnitude
    w[0, 768] = 5.0  # one outlier in a normal group
    w[1, 800] = -7.0
    # exact ties: range [0, 15/128], so s = 2^-7 (exact division) and w/s = i + 0.5
    ties = torch.arange(128, dtype=torch.float32) % 30 / 2 / 128
    ties[0], ties[1] = 0.0, 15 / 128
    w[:, 896:1024] = ties
    w[:, 1024:1152] = -ties  # ties below zero
    w[:, 1152:1280] = -0.25  # constant negative
    return w.to(dtype)


def _reference(w: torch.Tensor, group_size: int = G, scale_dtype=None):
    q, s, z = Q.rtn_int4(w, group_size, scale_dtype)
    return Q.pack_awq(q), s, z


def _reference_cuda_division(w: torch.Tensor, group_size: int = G, scale_dtype=None):
    """`quantize.rtn_int4` as torch evaluates it on CUDA, emulated on the CPU: there ATen computes
    ``fp32_tensor / 15`` as ``fp32_tensor * fl32(1/15)`` (a CPU-scalar divisor becomes a reciprocal);
    every other operation is the same on both devices."""
    n, k = w.shape
    wg = w.float().unflatten(1, (k // group_size, group_size))
    lo = wg.amin(dim=2).clamp_(max=0.0)
    hi = wg.amax(dim=2).clamp_(min=0.0)
    inv15 = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(15.0, dtype=torch.float32)
    s = Q._round_up_to((hi - lo).clamp_(min=1e-5) * inv15, scale_dtype or w.dtype)
    s32 = s.float()
    z = torch.round(-lo / s32).clamp_(0, Q.INT4_MAX)
    q = torch.round(wg / s32.unsqueeze(2)).add_(z.unsqueeze(2)).clamp_(0, Q.INT4_MAX)
    q = q.to(torch.uint8).view(n, k).t()
    return Q.pack_awq(q), s.t().contiguous(), z.to(torch.uint8).t().contiguous()


def _bits(t: torch.Tensor) -> torch.Tensor:  # floats as their bit patterns (tells -0.0 from 0.0)
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()]) if t.dtype.is_floating_point else t


def _assert_same(got, ref, what=""):
    for name, a, b in zip(("qweight", "scales", "zeros"), got, ref):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{what} {name}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        a, b = _bits(a), _bits(b)
        assert torch.equal(a, b), f"{what} {name}: {(a != b).sum().item()} of {a.numel()} differ"


def _marlin_reference(w: torch.Tensor, group_size: int = G, scale_dtype=None):
    qw, s, z = _reference(w, group_size, scale_dtype)
    n, k = w.shape
    return qw, Q.marlin_permute_scales(s, k, n, group_size), Q.marlin_zero_points(z, k // group_size, n, 4)


# ---------------------------------------------------------------- CPU, Triton interpreter


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
def test_pack_equals_torch(n, k, dtype):
    w = _weight(n, k, seed=n + k, dtype=dtype)
    _assert_same(F.rtn_int4_awq_pack(w), _reference(w), f"{n}x{k} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
def test_marlin_layouts_equal_torch(n, k, dtype):
    w = _weight(n, k, seed=3 * n + k, dtype=dtype)
    _assert_same(F.rtn_int4_awq_marlin(w), _marlin_reference(w), f"{n}x{k} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_special_groups(dtype):
    w = _special_weight(dtype)
    _assert_same(F.rtn_int4_awq_pack(w), _reference(w), str(dtype))
    _assert_same(F.rtn_int4_awq_marlin(w), _marlin_reference(w), f"marlin {dtype}")


def test_ties_are_exercised():
    """The tie groups really put w/s on .5 (exact division), so half-to-even rounding is tested."""
    w = _special_weight(torch.float32)[:, 896:1024]
    _, s, _ = Q.rtn_int4(w, G)
    assert torch.all(s == 2.0**-7)
    assert torch.any((w / 2.0**-7).frac() == 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_scale_division_mode(dtype):
    """scale_div="recip" is what "auto" does for CUDA tensors: torch-on-CUDA's ``x * fl32(1/15)``."""
    for w in (_special_weight(dtype), _weight(128, 384, seed=5, dtype=dtype)):
        got = F.rtn_int4_awq_pack(w, scale_div="recip")
        _assert_same(got, _reference_cuda_division(w), f"recip {dtype}")
    # fp32 scales: the two divisions differ in the last bit for most groups, so the modes differ
    w = _weight(64, 1024, seed=9)
    assert not torch.equal(F.rtn_int4_awq_pack(w, scale_div="recip")[1], F.rtn_int4_awq_pack(w)[1])


@pytest.mark.parametrize("group_size", [32, 64])
def test_other_group_sizes(group_size):
    w = _weight(128, 256, seed=group_size, dtype=torch.bfloat16)
    _assert_same(F.rtn_int4_awq_pack(w, group_size), _reference(w, group_size), f"G={group_size}")
    _assert_same(F.rtn_int4_awq_marlin(w, group_size), _marlin_reference(w, group_size), f"marlin G={group_size}")


def test_scale_dtype_override_and_strided_input():
    full = _weight(192, 640, seed=4)
    w = full[:, 128:512]  # a K-shard: row stride 640, unit column stride
    assert not w.is_contiguous()
    ref = _reference(w.contiguous(), G, torch.bfloat16)
    _assert_same(F.rtn_int4_awq_pack(w, G, torch.bfloat16), ref, "bf16 scales")
    _assert_same(F.rtn_int4_awq_marlin(w, G, torch.float16), _marlin_reference(w, G, torch.float16), "fp16 marlin")


def test_marlin_outputs_written_in_place():
    w = _weight(128, 256, seed=8, dtype=torch.bfloat16)
    scales = torch.full((2, 128), 7.0, dtype=torch.bfloat16)
    qzeros = torch.full((2, 16), -1, dtype=torch.int32)
    qw, s, z = F.rtn_int4_awq_marlin(w, scales_out=scales, qzeros_out=qzeros)
    assert s.data_ptr() == scales.data_ptr() and z.data_ptr() == qzeros.data_ptr()
    _assert_same((qw, scales, qzeros), _marlin_reference(w))
    with pytest.raises(ValueError, match="scales_out"):
        F.rtn_int4_awq_marlin(w, scales_out=scales.t().contiguous().t())  # wrong shape
    with pytest.raises(ValueError, match="qzeros_out"):
        F.rtn_int4_awq_marlin(w, qzeros_out=torch.empty(2, 16, dtype=torch.int64))


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of 64"):
        F.rtn_int4_awq_pack(torch.zeros(96, 128))
    with pytest.raises(ValueError, match="group_size"):
        F.rtn_int4_awq_pack(torch.zeros(64, 192))
    with pytest.raises(ValueError, match="2-D"):
        F.rtn_int4_awq_pack(torch.zeros(64, 128, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiple of 128"):
        F.rtn_int4_awq_marlin(torch.zeros(64, 64), group_size=64)  # Marlin needs K % 128 == 0


def test_env_var_interpreter_subprocess():
    """With TRITON_INTERPRET=1 before triton's import, the decorated kernel itself is interpreted."""
    code = textwrap.dedent(
        """
        import torch, triton
        from er_verl.draft import fused as F, quantize as Q
        from triton.runtime.interpreter import InterpretedFunction
        assert isinstance(F._compiled, InterpretedFunction)
        w = (torch.randn(128, 256, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
        F._kernel_for = lambda device: F._compiled
        qw, s, z = F.rtn_int4_awq_pack(w)
        q, s_ref, z_ref = Q.rtn_int4(w, 128)
        assert torch.equal(qw, Q.pack_awq(q)) and torch.equal(s, s_ref) and torch.equal(z, z_ref)
        print("OK")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]


# ---------------------------------------------------------------- GPU

QWEN3_8B_LINEARS = [(6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288)]  # (N, K): qkv, o, gate_up, down


def _gpu_weight(n: int, k: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, k, generator=g, device="cuda") * 0.02).to(dtype)


@pytest.mark.parametrize("n,k", QWEN3_8B_LINEARS)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_8b_shapes_equal_torch(n, k):
    w = _gpu_weight(n, k, seed=n + k)
    _assert_same(F.rtn_int4_awq_pack(w), _reference(w), f"{n}x{k}")
    _assert_same(F.rtn_int4_awq_marlin(w), _marlin_reference(w), f"marlin {n}x{k}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_special_groups_and_dtypes():
    for dtype in DTYPES:
        w = _special_weight(dtype).cuda()
        _assert_same(F.rtn_int4_awq_pack(w), _reference(w), f"special {dtype}")
        ref = _marlin_reference(w, G, torch.bfloat16)
        _assert_same(F.rtn_int4_awq_marlin(w, G, torch.bfloat16), ref, f"special marlin {dtype}")
        w = _gpu_weight(1536, 2048, seed=3, dtype=dtype)
        _assert_same(F.rtn_int4_awq_pack(w), _reference(w), f"1536x2048 {dtype}")
    for g in (32, 64):
        w = _gpu_weight(512, 1024, seed=g)
        _assert_same(F.rtn_int4_awq_marlin(w, g), _marlin_reference(w, g), f"G={g}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_recip_emulation_matches_cuda_torch():
    """The CPU emulation of torch-on-CUDA used above is what torch really does on CUDA."""
    for dtype in DTYPES:
        w = _gpu_weight(1536, 2048, seed=11, dtype=dtype)
        got = _reference_cuda_division(w.cpu())
        _assert_same(tuple(t.cpu() for t in _reference(w)), got, f"emulation {dtype}")


def _time_ms(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_timing_print():
    """Prints the fused kernel's time per Linear and for a 36-layer Qwen3-8B (no assertion)."""
    total_fused = total_torch = 0.0
    for n, k in QWEN3_8B_LINEARS:
        w = _gpu_weight(n, k, seed=0)
        scales = torch.empty(k // G, n, dtype=torch.bfloat16, device="cuda")
        qzeros = torch.empty(k // G, n // 8, dtype=torch.int32, device="cuda")
        fused_ms = _time_ms(lambda: F.rtn_int4_awq_marlin(w, G, torch.bfloat16, scales_out=scales, qzeros_out=qzeros))
        torch_ms = _time_ms(lambda: _marlin_reference(w, G, torch.bfloat16), repeats=3)
        gbps = 2 * n * k * (1 + 0.25 / 2) / fused_ms / 1e6
        print(f"\n{n:>6}x{k:<6} fused {fused_ms:.3f} ms ({gbps:.0f} GB/s)  torch {torch_ms:.3f} ms", end="")
        total_fused += 36 * fused_ms
        total_torch += 36 * torch_ms
    print(f"\nQwen3-8B, 36 layers, without awq_marlin_repack: fused {total_fused:.1f} ms, torch {total_torch:.1f} ms")
