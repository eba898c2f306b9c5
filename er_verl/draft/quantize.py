"""Drafter weight quantization: RTN int4 in SGLang's AWQ-Marlin layout, and per-channel fp8.

Pure torch (no sglang import); every function runs on CPU or GPU without leaving the device, so a
whole model can be requantized on the GPU after each weight update (pitfall 15 of
sglang-0.5.14-seams.md: SGLang itself runs the pack/zero-point helpers through numpy on the CPU).

Notation: N = output features, K = input features, G = group size (128 by default).

* The source weight is in `nn.Linear` layout, ``w[N, K]`` (SGLang's unquantized `layer.weight`;
  merged qkv / gate_up weights are concatenated along N).
* Everything AWQ stores is **input-major**, i.e. transposed with respect to ``w``:
  codes ``q[K, N]``, scales ``s[K/G, N]``, zero points ``z[K/G, N]``; packed
  ``qweight[K, N/8]`` and ``qzeros[K/G, N/8]`` (int32, 8 nibbles per word along N).
* Dequantization: ``w[n, k] ≈ (q[k, n] − z[k // G, n]) · s[k // G, n]``, with q, z ∈ [0, 15].

RTN (asymmetric, the range widened to contain 0 as GPTQ does), per group of G inputs of one output:
``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``s = max(hi − lo, 1e-5) / 15`` rounded *up* to
the scale dtype, ``z = round(−lo / s)``, ``q = clamp(round(w / s) + z, 0, 15)``. Then every element
is within s/2 of its dequantized value. For fp32 w and fp32 scales, and groups with min ≤ 0 ≤ max
(all real weights), this is bit-identical to SGLang's `quantize_weights(w.T, uint4, G, zero_points=True)`
(which, for one-signed groups, stores a zero point that clamps codes instead of widening the range).

AWQ packing puts column ``8c + ORDER[i]`` into nibble i of word c, ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``.
The Marlin conversion SGLang applies after loading (`AWQMarlinLinearKernel.process_weights_after_loading`)
is: `awq_marlin_repack` (a CUDA kernel, see `marlin.py`), `marlin_permute_scales` and
`awq_to_marlin_zero_points`; the last two are ported here as index-free views.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i]
MARLIN_GROUP_SIZES = (32, 64, 128)
MARLIN_MIN_N, MARLIN_MIN_K = 64, 128
INT4_MAX = 15
FP8_E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


# ---------------------------------------------------------------- checks


def check_marlin_shape(n: int, k: int, group_size: int) -> None:
    """Raise ValueError unless an [N, K] Linear shard can run as AWQ-Marlin with this group size."""
    if group_size not in MARLIN_GROUP_SIZES:
        raise ValueError(f"group_size = {group_size} is not supported; allowed: {MARLIN_GROUP_SIZES}.")
    if n % MARLIN_MIN_N:
        raise ValueError(f"N_out = {n} is not a multiple of {MARLIN_MIN_N}, which AWQ-Marlin requires.")
    if k % MARLIN_MIN_K:
        raise ValueError(f"K_in = {k} is not a multiple of {MARLIN_MIN_K}, which AWQ-Marlin requires.")


def _check_weight(w: torch.Tensor, name: str = "w") -> None:
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(
            f"{name} must be a 2-D floating-point [N_out, K_in] tensor; got shape {tuple(w.shape)}, "
            f"dtype {w.dtype}."
        )


def _pack_factor(num_bits: int) -> int:
    if num_bits not in (4, 8):
        raise ValueError(f"num_bits = {num_bits} is not supported; allowed: 4 or 8.")
    return 32 // num_bits


def _check_cols(x: torch.Tensor, pf: int, what: str) -> None:
    if x.dim() != 2 or x.shape[1] % pf:
        raise ValueError(
            f"{what} must be 2-D with a column count that is a multiple of {pf}; got shape {tuple(x.shape)}."
        )


# ---------------------------------------------------------------- RTN int4


def _round_up_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast positive fp32 `x` to `dtype`, rounding up (so a stored scale never shrinks the range)."""
    if dtype == torch.float32:
        return x
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"scale_dtype = {dtype} is not supported; allowed: float32, bfloat16, float16.")
    y = x.to(dtype)
    bumped = (y.view(torch.int16) + 1).view(dtype)  # next representable value (positive floats)
    return torch.where(y.float() < x, bumped, y)


def rtn_int4(
    w: torch.Tensor,  # [N, K] float, nn.Linear layout
    group_size: int = 128,
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric round-to-nearest int4 (formula in the module docstring).

    Returns input-major AWQ tensors: codes ``q[K, N]`` uint8 (a transposed view of an [N, K] buffer),
    scales ``s[K/G, N]`` in `scale_dtype` (default: w.dtype), zero points ``z[K/G, N]`` uint8.
    Math runs in fp32 on w's device. NaN/inf in w are not detected (that would need a host sync).
    """
    _check_weight(w)
    n, k = w.shape
    if group_size <= 0 or k % group_size:
        raise ValueError(
            f"K_in = {k} (w.shape[1]) is not a multiple of group_size = {group_size}; "
            "rtn_int4 needs whole groups along the input dimension."
        )
    wg = w.float().unflatten(1, (k // group_size, group_size))  # [N, K/G, G]
    lo = wg.amin(dim=2).clamp_(max=0.0)  # [N, K/G]
    hi = wg.amax(dim=2).clamp_(min=0.0)
    s = _round_up_to((hi - lo).clamp_(min=1e-5) / INT4_MAX, scale_dtype or w.dtype)
    s32 = s.float()
    z = torch.round(-lo / s32).clamp_(0, INT4_MAX)
    q = torch.round(wg / s32.unsqueeze(2)).add_(z.unsqueeze(2)).clamp_(0, INT4_MAX)
    q = q.to(torch.uint8).view(n, k)
    return q.t(), s.t().contiguous(), z.to(torch.uint8).t().contiguous()


def dequantize_int4(
    q: torch.Tensor,  # [K, N] integer codes in [0, 15]
    s: torch.Tensor,  # [K/G, N] scales
    z: torch.Tensor,  # [K/G, N] integer zero points in [0, 15]
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``w[n, k] = (q[k, n] − z[k//G, n]) · s[k//G, n]`` in nn.Linear layout [N, K].

    For bf16/fp16 scales the product (a ≤5-bit integer times an ≤11-bit mantissa) is exact in fp32,
    so casting to bf16 rounds once, like Marlin's own bf16 dequantization.
    """
    k, n = q.shape
    if s.shape != z.shape or s.dim() != 2 or s.shape[1] != n or k % s.shape[0]:
        raise ValueError(
            f"s and z must both be [K/G, N] with K/G dividing K = {k} and N = {n}; "
            f"got s {tuple(s.shape)}, z {tuple(z.shape)}."
        )
    qg = q.unflatten(0, (s.shape[0], -1)).float()  # [K/G, G, N]
    w = (qg - z.float().unsqueeze(1)) * s.float().unsqueeze(1)
    return w.flatten(0, 1).t().to(dtype)


# ---------------------------------------------------------------- packing


def pack_cols(q: torch.Tensor, num_bits: int = 4) -> torch.Tensor:  # q: [K, N] integer
    """SGLang's `pack_cols`: ``out[k, c] = Σ_i q[k, c·pf + i] << (num_bits·i)``, pf = 32 / num_bits.

    Returns int32 [K, N/pf]. Values must already lie in [0, 2^num_bits).
    """
    pf = _pack_factor(num_bits)
    _check_cols(q, pf, "q")
    qv = q.unflatten(1, (-1, pf))  # [K, N/pf, pf]
    out = torch.zeros(qv.shape[:2], dtype=torch.int32, device=q.device)
    for i in range(pf):
        out |= qv[:, :, i].to(torch.int32) << (num_bits * i)
    return out


def unpack_cols(packed: torch.Tensor, num_bits: int = 4) -> torch.Tensor:  # packed: [K, N/pf] int32
    """Inverse of `pack_cols`: int32 [K, N]."""
    pf = _pack_factor(num_bits)
    if packed.dim() != 2 or packed.dtype != torch.int32:
        raise ValueError(f"packed must be a 2-D int32 tensor; got {tuple(packed.shape)} {packed.dtype}.")
    shifts = torch.arange(0, 32, num_bits, dtype=torch.int32, device=packed.device)
    return ((packed.unsqueeze(2) >> shifts) & ((1 << num_bits) - 1)).flatten(1)


def _interleave(x: torch.Tensor, num_bits: int) -> torch.Tensor:  # [R, N] -> [R, N]
    """``out[:, pf·c + i] = x[:, pf·c + ORDER[i]]``; ORDER = AWQ_ORDER (4 bit) or (0, 2, 1, 3) (8 bit).

    ORDER[i] for i = b·pf/2 + a is 2a + b, i.e. a transpose of each block seen as [pf/2, 2].
    """
    pf = _pack_factor(num_bits)
    return x.unflatten(1, (-1, pf // 2, 2)).transpose(2, 3).flatten(1)


def _deinterleave(x: torch.Tensor, num_bits: int) -> torch.Tensor:  # [R, N] -> [R, N]
    """Inverse of `_interleave` (SGLang indexes with ``argsort(ORDER)``)."""
    pf = _pack_factor(num_bits)
    return x.unflatten(1, (-1, 2, pf // 2)).transpose(2, 3).flatten(1)


def pack_awq(q: torch.Tensor) -> torch.Tensor:  # q: [K, N] codes in [0, 15]
    """AWQ column packing: word c of row k holds ``q[k, 8c + AWQ_ORDER[i]]`` in nibble i. int32 [K, N/8]."""
    _check_cols(q, 8, "q")
    return pack_cols(_interleave(q, 4), 4)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:  # packed: [K, N/8] int32
    """Inverse of `pack_awq`: int32 codes [K, N]."""
    return _deinterleave(unpack_cols(packed, 4), 4)


# ---------------------------------------------------------------- Marlin layout


def marlin_permute_scales(
    s: torch.Tensor,  # [K/G, N]
    size_k: int,
    size_n: int,
    group_size: int,
) -> torch.Tensor:
    """Port of SGLang's `marlin_permute_scales` (same result, no index tensors): [K/G, N] → [K/G, N].

    Grouped (G < K): each 64-column block is read as an 8×8 matrix and transposed
    (``scale_perm[8i + j] = i + 8j``). Otherwise (G == K or −1), each 32-column block
    is read as [4, 4, 2] and its first two axes swapped (``scale_perm_single``).
    """
    if s.dim() != 2 or s.shape[1] != size_n or size_n % MARLIN_MIN_N:
        raise ValueError(
            f"s must be [K/G, N] with N = size_n = {size_n} a multiple of {MARLIN_MIN_N}; "
            f"got shape {tuple(s.shape)}."
        )
    if group_size < size_k and group_size != -1:
        blocks = s.reshape(-1, 8, 8).transpose(1, 2)
    else:
        blocks = s.reshape(-1, 4, 4, 2).transpose(1, 2)
    return blocks.reshape(-1, size_n).contiguous()


def marlin_zero_points(
    zp: torch.Tensor,  # [K/G, N] integer zero points (natural column order)
    size_k: int,  # number of groups K/G, as SGLang names it
    size_n: int,
    num_bits: int = 4,
) -> torch.Tensor:
    """Port of SGLang's `marlin_zero_points`: 64-block scale permutation, interleave, `pack_cols`.

    Returns int32 [K/G, N·num_bits/32], the final `qzeros` buffer of an AWQ-Marlin layer.
    """
    if zp.shape != (size_k, size_n) or size_n % MARLIN_MIN_N:
        raise ValueError(
            f"zp must be [size_k, size_n] = [{size_k}, {size_n}] with size_n a multiple of "
            f"{MARLIN_MIN_N}; got shape {tuple(zp.shape)}."
        )
    permuted = zp.reshape(-1, 8, 8).transpose(1, 2).reshape(size_k, size_n)
    return pack_cols(_interleave(permuted, num_bits), num_bits)


def awq_to_marlin_zero_points(
    q_zp_packed: torch.Tensor,  # [K/G, N/8] int32, AWQ packing
    size_k: int,  # number of groups K/G
    size_n: int,
    num_bits: int = 4,
) -> torch.Tensor:
    """Port of SGLang's `awq_to_marlin_zero_points`: unpack, undo the AWQ interleave, then
    `marlin_zero_points`. Returns int32 [K/G, N/8]."""
    pf = _pack_factor(num_bits)
    if q_zp_packed.shape != (size_k, size_n // pf):
        raise ValueError(
            f"q_zp_packed must be [size_k, size_n/{pf}] = [{size_k}, {size_n // pf}]; "
            f"got shape {tuple(q_zp_packed.shape)}."
        )
    zp = _deinterleave(unpack_cols(q_zp_packed, num_bits), num_bits)
    return marlin_zero_points(zp, size_k, size_n, num_bits)


# ---------------------------------------------------------------- fp8 per output channel


def quantize_fp8_per_channel(
    w: torch.Tensor,  # [N, K] float, nn.Linear layout
    eps: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 with one fp32 scale per output row: ``s[n] = max(max_k |w[n, k]|, eps) / 448``,
    ``q = clamp(w · (1/s), ±448)`` cast to float8_e4m3fn (round to nearest even).

    The formula of SGLang's online fp8 (`fp8.py`, `per_token_group_quant_fp8(w, K)`).
    Returns ``q[N, K]`` float8_e4m3fn and ``s[N]`` float32; SGLang stores ``q.t()`` and ``s`` as [1, N].
    """
    _check_weight(w)
    w32 = w.float()
    s = w32.abs().amax(dim=1).clamp_(min=eps) / FP8_E4M3_MAX  # [N]
    q = (w32 * s.reciprocal().unsqueeze(1)).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return q.to(torch.float8_e4m3fn), s


def dequantize_fp8(
    q: torch.Tensor,  # [N, K] float8_e4m3fn
    s: torch.Tensor,  # [N] float32
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``w[n, k] = q[n, k] · s[n]`` as [N, K] in `dtype`."""
    if q.dim() != 2 or s.reshape(-1).shape[0] != q.shape[0]:
        raise ValueError(f"s must hold one scale per row of q {tuple(q.shape)}; got {tuple(s.shape)}.")
    return (q.float() * s.reshape(-1, 1).float()).to(dtype)
