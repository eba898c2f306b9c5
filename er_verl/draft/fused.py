"""One-pass RTN int4 + AWQ packing (and the Marlin scale/zero layout) as a Triton kernel.

`requantize_linear_`'s eager torch path (`quantize.rtn_int4` → `pack_awq` →
`marlin_permute_scales` / `marlin_zero_points`) reads and writes the [N, K] weight many times over
(fp32 copy, min, max, divide, round, add, clamp, uint8, transpose, interleave, eight shift-or passes)
and launches ~40 kernels per Linear. Here one kernel reads each bf16 weight once and writes:

* ``qweight_awq`` int32 [K, N/8]: AWQ column packing, word c of row k holds column
  ``8c + AWQ_ORDER[i]`` in nibble i (``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``), i.e. column
  ``8c + j`` goes to nibble ``(j >> 1) + 4 (j & 1)``: exactly ``quantize.pack_awq(q)``;
* either the plain ``scales`` [K/G, N] (scale dtype) and ``zeros`` uint8 [K/G, N] of
  ``quantize.rtn_int4`` (`rtn_int4_awq_pack`), or directly the Marlin buffers
  ``marlin_permute_scales(s)`` [K/G, N] and ``marlin_zero_points(z)`` int32 [K/G, N/8]
  (`rtn_int4_awq_marlin`, `requantize_marlin_`).

Why one pass: a program owns one K-group (G = 128 rows of K) × BLOCK_N output columns, which is
exactly the support of BLOCK_N scales/zero points, and BLOCK_N is a multiple of 64, which is
exactly the support of Marlin's scale permutation (8×8 transpose of each 64-column block) and of
its zero-point words. The program reads its tile once, as 8 sub-tiles [BLOCK_N/8, G] (sub-tile j:
columns n0 + 8c + j, each row G contiguous elements of w, so loads are coalesced), reduces min/max
along K in registers, quantizes the same registers, and ORs sub-tile j's codes, shifted to nibble
(j >> 1) + 4 (j & 1), into the [BLOCK_N/8, G] AWQ words (element-wise: no shuffle). It writes the
words (transposed, [G, BLOCK_N/8] of qweight_awq), BLOCK_N scales and BLOCK_N/8 zero words. Nothing
is read twice and no intermediate touches memory; `awq_marlin_repack` (SGLang's CUDA kernel) then
turns the AWQ words into Marlin tiles in one more pass over K·N/2 bytes.

Measured on an H200 (bf16 w, 36 layers of Qwen3-8B shapes, CUDA events), 2026-11-25, two runs:
a kernel-level check with only SGLang's jit_kernel importable gave the kernel 14.8 ms (~1.0-1.1 TB/s
of bf16 read) and kernel + repack (`requantize_marlin_`) 32.3 ms, against 293 ms for the torch path;
the full-bundle run of ``python -m er_verl.bench.requant --check`` through ``marlin.requantize_linear_``
on real SGLang layers gave 43.6 ms (results/issue3_requant_8b_fused_h200.json). SGLang's repack is
~17 ms of the first figure (~0.4 TB/s): writing the Marlin tile layout from this kernel directly is
the next step.

Bit-exactness with `quantize.rtn_int4` (+ `pack_awq`, `marlin_*`) on the same device:

* all arithmetic is fp32 as in torch; w/s and −lo/s use `tl.div_rn` (IEEE division, which torch's
  tensor/tensor division is on CPU and CUDA; Triton's plain ``/`` is approximate on GPUs);
* ``(hi − lo).clamp(min=1e-5) / 15``: torch divides by a Python scalar, which on CUDA is computed
  as ``x * fl32(1/15)`` (ATen `div_true_kernel_cuda` replaces a CPU-scalar divisor by its
  reciprocal) and on CPU as a true division. The two differ in the last bit for most x, so the
  kernel does what the reference does on w's device (``scale_div="auto"``); see `_INV15`;
* torch.round (half to even) is ``(x + 1.5·2^23) − 1.5·2^23``: exact round-half-even in fp32 for
  |x| < 2^22, and here |x| ≤ 15·(1 + 2^-22) (no libdevice, so the Triton interpreter runs it too);
* the scale round-up of `quantize._round_up_to` (cast to nearest, bump by one ulp if below) equals
  the ceiling to the scale dtype for positive x, done on the fp32 bits: bf16 keeps the top 16 bits
  (``(b + 0xFFFF) & ~0xFFFF``), fp16 the top 19 in its normal range and multiples of 2^-24 below.

NaN/inf in w give unspecified codes (the torch path does not define them either). On a CPU tensor
the kernel runs in the Triton interpreter (slow; for tests); `requantize_linear_` only calls this
for CUDA weights.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from er_verl.draft.quantize import MARLIN_GROUP_SIZES, check_marlin_shape

# fl32(1 / 15): the reciprocal ATen multiplies by for `fp32_tensor / 15` on CUDA.
_INV15 = tl.constexpr(0.06666667014360428)
_RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: x + M rounds x to an integer, half to even
_SCALE_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_SCALE_DIVS = ("auto", "recip", "exact")

# tl.min / tl.max / tl.sum / tl.zeros are themselves @triton.jit functions, made compiled or
# interpreted once, when triton is imported (TRITON_INTERPRET). The kernel uses only builtins:
# tl.reduce with their combine functions is the same reduction on the GPU, and the interpreter maps
# these combine functions to numpy min/max/sum (call it as tl.reduce: the interpreter patches that
# attribute). So the same body also runs interpreted (`_kernel_for`) without the env var.
_MIN = tl.standard._elementwise_min
_MAX = tl.standard._elementwise_max
_SUM = tl.standard._sum_combine


def _rtn_int4_awq_body(
    w_ptr,  # [N, K] float, row stride stride_wn, unit column stride
    qw_ptr,  # [K, N/8] int32 out: AWQ-packed codes
    s_ptr,  # [K/G, N] scale dtype out (plain or Marlin-permuted)
    z_ptr,  # [K/G, N] uint8 out (plain), or [K/G, N/8] int32 out (Marlin-packed)
    stride_wn,
    N,
    N8,
    G: tl.constexpr,
    BLOCK_N: tl.constexpr,  # a multiple of 64
    SCALE_KIND: tl.constexpr,  # 0 fp32, 1 bf16, 2 fp16
    RECIP: tl.constexpr,  # scale = range * fl32(1/15) (torch on CUDA) instead of range / 15 (CPU)
    MARLIN: tl.constexpr,  # write marlin_permute_scales(s) and marlin_zero_points(z)
    SINGLE_GROUP: tl.constexpr,  # K == G: Marlin's scale_perm_single for the scales
):
    """Program (pid_n, g): columns n0 .. n0 + BLOCK_N of w (output features), K rows g·G .. g·G + G.

    The tile is read as 8 sub-tiles [BLOCK_N/8, G], sub-tile j holding columns n0 + 8c + j
    (c < BLOCK_N/8): each is quantized on its own (min/max along K, in-register), and AWQ word c of
    row k is the OR of the 8 sub-tiles' codes shifted to their nibbles, so packing needs no
    cross-thread shuffle; the only data movement is the transposed store of the [BLOCK_N/8, G] words.
    """
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    n0 = pid_n * BLOCK_N
    c = tl.arange(0, BLOCK_N // 8)  # AWQ word index within the tile
    rk = tl.arange(0, G)
    cols = (g * G + rk).to(tl.int64)  # K indices
    words = tl.full([BLOCK_N // 8, G], 0, tl.int32)
    for j in tl.static_range(8):
        # ---- sub-tile j: RTN in fp32, quantize.rtn_int4 step by step
        rows = (n0 + 8 * c + j).to(tl.int64)
        w = tl.load(w_ptr + rows[:, None] * stride_wn + cols[None, :]).to(tl.float32)  # [BLOCK_N/8, G]
        lo = tl.minimum(tl.reduce(w, 1, _MIN), 0.0)
        hi = tl.maximum(tl.reduce(w, 1, _MAX), 0.0)
        rng = tl.maximum(hi - lo, 1e-5)
        if RECIP:
            x = rng * _INV15
        else:
            x = tl.div_rn(rng, tl.full([BLOCK_N // 8], 15.0, tl.float32))
        if SCALE_KIND == 1:  # ceil to bf16: drop the low 16 bits, rounding up
            s = ((x.to(tl.int32, bitcast=True) + 0xFFFF) & -65536).to(tl.float32, bitcast=True)
        elif SCALE_KIND == 2:  # ceil to fp16: 10 mantissa bits if normal, else multiples of 2^-24
            s_norm = ((x.to(tl.int32, bitcast=True) + 0x1FFF) & -8192).to(tl.float32, bitcast=True)
            s_sub = tl.ceil(x * 16777216.0) * 5.960464477539063e-08
            s = tl.where(x < 6.103515625e-05, s_sub, s_norm)
        else:
            s = x
        z = tl.div_rn(-lo, s)
        z = (z + _RNE_MAGIC) - _RNE_MAGIC
        z = tl.minimum(tl.maximum(z, 0.0), 15.0)
        q = tl.div_rn(w, tl.broadcast_to(s[:, None], [BLOCK_N // 8, G]))
        q = (q + _RNE_MAGIC) - _RNE_MAGIC
        q = tl.minimum(tl.maximum(q + z[:, None], 0.0), 15.0).to(tl.int32)
        # ---- AWQ: column 8c + j is nibble (j >> 1) + 4 (j & 1) of word c
        words = words | (q << ((j >> 1) * 4 + (j & 1) * 16))

        # ---- scales and zero points of columns n0 + 8c + j
        zi = z.to(tl.int32)
        if MARLIN:
            t = 8 * c + j
            if SINGLE_GROUP:  # column 32m + 8x + 2y + e -> 32m + 8y + 2x + e
                dst = (t // 32) * 32 + ((t // 2) % 4) * 8 + ((t // 8) % 4) * 2 + t % 2
            else:  # column 64m + 8b + a -> 64m + 8a + b
                dst = (t // 64) * 64 + (t % 8) * 8 + (t // 8) % 8
            tl.store(s_ptr + g * N + n0 + dst, s)
            # marlin_zero_points: column 64m + 8b + j -> word 8m + j, nibble (b >> 1) + 4 (b & 1)
            b = c % 8
            zw = tl.reshape(zi << ((b >> 1) * 4 + (b & 1) * 16), [BLOCK_N // 64, 8])
            zw = tl.reduce(zw, 1, _SUM)  # disjoint bits: sum == or
            m = tl.arange(0, BLOCK_N // 64)
            tl.store(z_ptr + g * N8 + pid_n * (BLOCK_N // 8) + 8 * m + j, zw)
        else:
            tl.store(s_ptr + g * N + n0 + 8 * c + j, s)
            tl.store(z_ptr + g * N + n0 + 8 * c + j, zi.to(tl.uint8))
    tl.store(qw_ptr + cols[None, :] * N8 + (pid_n * (BLOCK_N // 8) + c)[:, None], words)


_compiled = triton.jit(_rtn_int4_awq_body)  # an InterpretedFunction if TRITON_INTERPRET=1 at import
_interpreted = None


def _kernel_for(device: torch.device):
    """The compiled kernel for GPU tensors; the Triton interpreter for CPU tensors."""
    global _interpreted
    if device.type != "cpu":
        return _compiled
    if _interpreted is None:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted = InterpretedFunction(_rtn_int4_awq_body)
    return _interpreted


# Tile and warps, measured on an H200 (bf16 w, Marlin mode, all four Qwen3-8B Linear shapes):
# BLOCK_N = 64 with 4 warps was fastest for every shape (0.205 ms for 24576x4096, ~1.1 TB/s; 14.8 ms
# for the 36-layer model), ahead of 128/4 (+4..9%) and 256/16 (+35..40%); 16 warps at 64 halves it.
_BLOCK_N = 64
_NUM_WARPS = 4


def _launch(
    w: torch.Tensor,
    group_size: int,
    scale_dtype: torch.dtype | None,
    scale_div: str,
    marlin: bool,
    qweight_out: torch.Tensor | None = None,
    scales_out: torch.Tensor | None = None,
    zeros_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if w.dim() != 2 or w.dtype not in _SCALE_KIND:
        raise ValueError(
            f"w must be a 2-D float32/bfloat16/float16 [N_out, K_in] tensor; got {tuple(w.shape)} {w.dtype}."
        )
    n, k = w.shape
    if marlin:
        check_marlin_shape(n, k, group_size)
    if group_size not in MARLIN_GROUP_SIZES or k % group_size or n % 64:
        raise ValueError(
            f"w of shape [N, K] = [{n}, {k}] with group_size = {group_size}: the fused kernel needs "
            f"group_size in {MARLIN_GROUP_SIZES}, K a multiple of it and N a multiple of 64."
        )
    scale_dtype = scale_dtype or w.dtype
    if scale_dtype not in _SCALE_KIND:
        raise ValueError(f"scale_dtype = {scale_dtype} is not supported; allowed: float32, bfloat16, float16.")
    if scale_div not in _SCALE_DIVS:
        raise ValueError(f"scale_div = {scale_div!r}; allowed: {_SCALE_DIVS}.")
    if w.stride(1) != 1:
        w = w.contiguous()
    ngroups, dev = k // group_size, w.device
    if qweight_out is None:
        qweight_out = torch.empty(k, n // 8, dtype=torch.int32, device=dev)
    if scales_out is None:
        scales_out = torch.empty(ngroups, n, dtype=scale_dtype, device=dev)
    if zeros_out is None:
        zeros_out = (
            torch.empty(ngroups, n // 8, dtype=torch.int32, device=dev)
            if marlin
            else torch.empty(ngroups, n, dtype=torch.uint8, device=dev)
        )
    recip = scale_div == "recip" or (scale_div == "auto" and dev.type == "cuda")
    # Triton launches on the current CUDA device: make it w's
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _kernel_for(dev)[(n // _BLOCK_N, ngroups)](
            w, qweight_out, scales_out, zeros_out, w.stride(0), n, n // 8,
            G=group_size, BLOCK_N=_BLOCK_N, SCALE_KIND=_SCALE_KIND[scale_dtype], RECIP=recip,
            MARLIN=marlin, SINGLE_GROUP=ngroups == 1, num_warps=_NUM_WARPS,
        )  # fmt: skip
    return qweight_out, scales_out, zeros_out


def rtn_int4_awq_pack(
    w: torch.Tensor,  # [N, K] float32/bfloat16/float16, nn.Linear layout
    group_size: int = 128,
    scale_dtype: torch.dtype | None = None,
    scale_div: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pack_awq(q), s, z`` for ``q, s, z = quantize.rtn_int4(w, group_size, scale_dtype)``, one pass.

    Returns ``qweight_awq`` int32 [K, N/8], ``scales`` [K/G, N] in `scale_dtype` (default w.dtype),
    ``zeros`` uint8 [K/G, N]. Bit-identical to the torch functions on w's device. `scale_div`:
    "auto" follows w's device, "recip" is torch-on-CUDA's ``x * fl32(1/15)``, "exact" torch-on-CPU's
    ``x / 15`` (module docstring). Needs N % 64 == 0, K % G == 0, G in (32, 64, 128).
    """
    return _launch(w, group_size, scale_dtype, scale_div, marlin=False)


def rtn_int4_awq_marlin(
    w: torch.Tensor,  # [N, K] float32/bfloat16/float16, nn.Linear layout
    group_size: int = 128,
    scale_dtype: torch.dtype | None = None,
    scale_div: str = "auto",
    scales_out: torch.Tensor | None = None,
    qzeros_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like `rtn_int4_awq_pack`, but the scales and zero points come out in Marlin's layout.

    Returns ``qweight_awq`` int32 [K, N/8] (still to go through `awq_marlin_repack`),
    ``marlin_permute_scales(s, K, N, G)`` [K/G, N] and ``marlin_zero_points(z, K/G, N, 4)``
    int32 [K/G, N/8]. `scales_out` / `qzeros_out`, if given (contiguous, of those shapes and dtypes),
    are written in place and returned.
    """
    n, k = w.shape
    for name, t, shape, dtype in (
        ("scales_out", scales_out, (k // group_size, n), scale_dtype or w.dtype),
        ("qzeros_out", qzeros_out, (k // group_size, n // 8), torch.int32),
    ):
        if t is not None and not _writable(t, shape, dtype, w.device):
            raise ValueError(
                f"{name} must be a contiguous {dtype} tensor of shape {shape} on {w.device}; "
                f"got {tuple(t.shape)} {t.dtype} on {t.device} (contiguous: {t.is_contiguous()})."
            )
    return _launch(w, group_size, scale_dtype, scale_div, marlin=True, scales_out=scales_out, zeros_out=qzeros_out)


def _writable(t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> bool:
    return tuple(t.shape) == tuple(shape) and t.dtype == dtype and t.device == device and t.is_contiguous()


def _repack_into_(out: torch.Tensor, qweight_awq: torch.Tensor, k: int, n: int) -> None:
    """``out.copy_(awq_marlin_repack(qweight_awq, k, n, 4))``, writing into `out` directly when it can.

    SGLang's public wrapper allocates its output; its JIT module takes the output as an argument,
    which saves a K·N/2-byte temporary and a copy per Linear. Falls back to the public call + copy_.
    """
    if _writable(out, (k // 16, 2 * n), torch.int32, qweight_awq.device):
        try:
            from sglang.jit_kernel.awq_marlin_repack import _jit_awq_marlin_repack_module
        except ImportError:
            pass
        else:
            _jit_awq_marlin_repack_module().awq_marlin_repack(out, qweight_awq, k, n, 4)
            return
    from sglang.jit_kernel.awq_marlin_repack import awq_marlin_repack

    out.copy_(awq_marlin_repack(qweight_awq, size_k=k, size_n=n, num_bits=4))


@torch.no_grad()
def requantize_marlin_(
    qweight: torch.Tensor,  # int32 [K/16, 2N], the layer's live Marlin buffer
    scales: torch.Tensor,  # [K/G, N], live
    qzeros: torch.Tensor,  # int32 [K/G, N/8], live
    w: torch.Tensor,  # [N, K] CUDA float, nn.Linear layout
    group_size: int = 128,
) -> None:
    """Rewrite an AWQ-Marlin layer's three buffers in place from `w`: one Triton pass (codes, scales,
    zero points) + SGLang's `awq_marlin_repack`. Same bytes as the torch path of
    `marlin.requantize_linear_`; buffer addresses are unchanged (non-contiguous buffers get copy_())."""
    n, k = w.shape
    ngroups = k // group_size
    s_direct = _writable(scales, (ngroups, n), scales.dtype, w.device)
    z_direct = _writable(qzeros, (ngroups, n // 8), torch.int32, w.device)
    qw, s, z = rtn_int4_awq_marlin(
        w, group_size, scales.dtype,
        scales_out=scales if s_direct else None, qzeros_out=qzeros if z_direct else None,
    )  # fmt: skip
    if not s_direct:
        scales.copy_(s)
    if not z_direct:
        qzeros.copy_(z)
    _repack_into_(qweight, qw, k, n)
