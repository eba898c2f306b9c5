"""The drafter's own W4A16 GEMM for decode batches: a Triton kernel over a group-major int4 layout.

Why: on the H200, SGLang's AWQ-Marlin GEMM reads int4 weights at 1.3-2.1 TB/s for M = 1..8 tokens
(results/issue4_int4_gemm_h200.json): 59% of a drafter step went to it, and the draft step stayed
at 0.68x of a bf16 target step where its weight bytes are 0.22x. This kernel is written for the
small-M shape of a draft step: memory-bound, one pass over the codes, tensor cores for the products.

Quantization is the drafter's RTN of `quantize.rtn_int4` (asymmetric, group G = 128, codes 0..15):
w[n, k] ≈ s[g, n] · (q[n, k] − z[g, n]) with g = k // G. The layout (``pack_groups``):

* ``qweight`` int32 [K/8, N]: word (r, n) holds the codes of k = 8r .. 8r + 7 of row n, k = 8r + j
  in nibble j (GPTQ's packing along K). A program loads its [128, BLOCK_N] tile of a group as
  words[k // 8, n] (rows of words contiguous over N; each word read once from DRAM and then by its
  8 k from L1) and unpacks with a per-k shift, so the tile is already in the [K, N] order of the dot.
* ``scales`` [K/G, N] (bf16) and ``zeros`` [K/G, N] (bf16, integers 0..15): one row per group,
  contiguous over N.

The product factors the zero point out of the dot:
  y[m, n] = Σ_g s[g, n] · (Σ_{k∈g} x[m, k] q[n, k] − z[g, n] · Σ_{k∈g} x[m, k]),
so the tensor cores see the exact integer codes (bf16 holds 0..15 exactly) and the fp32 accumulator
gets one scale multiply per group. Rows of x beyond M are masked; M ≤ 16 costs one 16-row tile.

sglang is not imported; the torch helpers run on CPU (tests), the kernel on CUDA (or the Triton
interpreter, TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GROUP = 128


def pack_groups(q: torch.Tensor) -> torch.Tensor:  # q: [N, K] uint8 codes 0..15
    """Codes [N, K] → qweight int32 [K/8, N]: word (r, n) holds k = 8r + j in nibble j."""
    n, k = q.shape
    if k % GROUP:
        raise ValueError(f"K = {k} is not a multiple of the group size {GROUP}.")
    codes = q.to(torch.int32).t().reshape(k // 8, 8, n)  # [K/8, j, N]
    words = torch.zeros(k // 8, n, dtype=torch.int32, device=q.device)
    for j in range(8):
        words |= codes[:, j, :] << (4 * j)  # nibble 7 lands in the sign bit: same bits as uint32
    return words


def unpack_groups(qweight: torch.Tensor) -> torch.Tensor:  # qweight: [K/8, N] int32
    """The inverse of `pack_groups`: codes [N, K] uint8."""
    rows, n = qweight.shape
    codes = torch.stack([(qweight >> (4 * j)) & 0xF for j in range(8)], dim=1)  # [K/8, j, N]
    return codes.reshape(rows * 8, n).t().to(torch.uint8).contiguous()


def reference_mm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ dequant(qweight)ᵀ in float32 (the kernel's contract, for tests)."""
    q = unpack_groups(qweight).float()  # [N, K]
    s = scales.float().t().repeat_interleave(GROUP, dim=1)  # [N, K]
    z = zeros.float().t().repeat_interleave(GROUP, dim=1)
    return x.float() @ ((q - z) * s).t()


@triton.jit
def _w4a16_kernel(
    x_ptr,  # [M, K] bf16 (or fp16), row stride stride_xm
    q_ptr,  # [K/8, N] int32
    s_ptr,  # [K/G, N] x's dtype
    z_ptr,  # [K/G, N] x's dtype
    y_ptr,  # [M, N] x's dtype, row stride stride_ym
    M,
    N,
    K,
    stride_xm,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT: tl.constexpr,  # tensor-core products (any M); else CUDA-core FMA (BLOCK_M == 1)
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, 128)
    m_ok = rm[:, None] < M
    shift = ((rk % 8) * 4)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for g in range(0, K // 128):
        # [128, BLOCK_N]: each word is read by the 8 k that share it (one DRAM read, 8 L1 hits)
        words = tl.load(q_ptr + ((g * 16 + rk // 8)[:, None] * N + rn[None, :]).to(tl.int64))
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + (g * 128 + rk)[None, :], mask=m_ok, other=0.0)
        codes = (words >> shift) & 0xF
        if DOT:
            part = tl.dot(x, codes.to(x.dtype))  # [BLOCK_M, BLOCK_N]: exact codes, fp32 sums
        else:
            part = tl.sum(codes.to(tl.float32) * tl.trans(x.to(tl.float32)), axis=0)[None, :]
        xsum = tl.sum(x.to(tl.float32), axis=1)
        s = tl.load(s_ptr + g * N + rn).to(tl.float32)
        z = tl.load(z_ptr + g * N + rn).to(tl.float32)
        acc += (part - xsum[:, None] * z[None, :]) * s[None, :]
    tl.store(y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_ok)


def pick_config(m: int, n: int, k: int) -> dict:
    """Tile and launch parameters for an [M, K] x [K, N] product (measured on an H200, see below)."""
    block_n = 32 if n * k <= 4096 * 12288 else 64
    return dict(BLOCK_M=16 if m <= 16 else 32, BLOCK_N=block_n, DOT=True, num_warps=4, num_stages=3)


def w4a16_mm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
             out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ dequant(qweight)ᵀ in x's dtype (bf16; fp16 too). No host sync; graph-capturable."""
    m, k = x.shape
    rows, n = qweight.shape
    groups = k // GROUP
    if rows * 8 != k or k % GROUP or tuple(scales.shape) != (groups, n) or scales.shape != zeros.shape:
        raise ValueError(
            f"w4a16_mm: x {tuple(x.shape)}, qweight {tuple(qweight.shape)}, scales {tuple(scales.shape)}, "
            f"zeros {tuple(zeros.shape)}; needs qweight [K/8, N] and scales = zeros [K/{GROUP}, N], K % {GROUP} = 0."
        )
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = dict(config or pick_config(m, n, k))
    if n % cfg["BLOCK_N"] or (not cfg["DOT"] and cfg["BLOCK_M"] != 1):
        raise ValueError(f"w4a16_mm: N = {n}, K/G = {groups} do not tile by {cfg}.")
    y = out if out is not None else torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (n // cfg["BLOCK_N"], triton.cdiv(m, cfg["BLOCK_M"]))
    _w4a16_kernel[grid](x, qweight, scales, zeros, y, m, n, k, x.stride(0), y.stride(0), **cfg)
    return y
