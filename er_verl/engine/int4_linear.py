"""The int4 drafter's Linear layers on er_verl's decode GEMM (``er_verl/draft/decode_gemm.py``).

SGLang's AWQ-Marlin GEMM moves ~1.7 TB/s at decode batch sizes on an H200; the decode GEMM streams the
same RTN int4 weights (group 128, zero points) in a layout made for M <= 32 tokens. This module gives
SGLang a quantization config whose Linear method owns that layout:

* ``qweight`` int32 [N, K/8] and ``sz`` int32 [N, K/128] (``decode_gemm`` packing), nothing else;
* ``apply``: one kernel launch per 32 tokens (x made contiguous only when its rows are not 16-byte aligned);
* requant: ``decode_gemm.requantize_`` (one CUDA kernel per layer, in place).

``ER_VERL_INT4_GEMM=marlin`` keeps SGLang's AWQ-Marlin layers instead (the layout before this kernel,
kept for comparison). A Linear whose shard is not N % 16 == 0 and K % 128 == 0 stays the target's own.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from sglang.srt.layers.linear import LinearBase
from sglang.srt.layers.quantization.base_config import LinearMethodBase
from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod
from torch.nn import Parameter

from er_verl.draft import decode_gemm

GEMM_ENV = "ER_VERL_INT4_GEMM"
GEMMS = ("decode", "marlin")


def int4_gemm() -> str:
    """The int4 drafter's GEMM from ``ER_VERL_INT4_GEMM`` (default ``decode``)."""
    choice = os.environ.get(GEMM_ENV, "decode")
    if choice not in GEMMS:
        raise ValueError(f"{GEMM_ENV}={choice!r} is not an int4 drafter GEMM; allowed: {', '.join(GEMMS)}.")
    return choice


class DecodeGemmLinearMethod(LinearMethodBase):
    """RTN int4 weights in the decode GEMM's layout; written only by requant, never loaded."""

    def create_weights(self, layer, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs):
        n, k = sum(output_partition_sizes), input_size_per_partition
        if n % decode_gemm.TILE_N or k % decode_gemm.GROUP:
            raise ValueError(
                f"er_verl's int4 decode GEMM needs a Linear shard with N % {decode_gemm.TILE_N} == 0 and "
                f"K % {decode_gemm.GROUP} == 0; this one is N = {n}, K = {k}. Use a tensor-parallel size that "
                f"divides it so, or set {GEMM_ENV}=marlin."
            )
        if params_dtype != torch.bfloat16:
            raise ValueError(
                f"er_verl's int4 decode GEMM runs bf16 models; this one is {params_dtype}. "
                f"Set {GEMM_ENV}=marlin to draft with SGLang's AWQ-Marlin layers instead."
            )
        layer.qweight = Parameter(torch.empty(n, k // 8, dtype=torch.int32), requires_grad=False)
        layer.sz = Parameter(torch.empty(n, k // decode_gemm.GROUP, dtype=torch.int32), requires_grad=False)
        layer.input_size_per_partition = k
        layer.output_size_per_partition = n
        layer.num_groups = k // decode_gemm.GROUP

    def process_weights_after_loading(self, layer) -> None:
        pass  # the buffers are already in the kernel's layout; requant fills them

    def apply(self, layer, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # [M, K]
        if rows.stride(-1) != 1 or rows.stride(0) % 8 or rows.data_ptr() % 16:
            rows = rows.contiguous()
        y = decode_gemm.gemm(rows, layer.qweight, layer.sz)  # [M, N]
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


def decode_gemm_fits(layer) -> bool:
    """N % 16 == 0 and K % 128 == 0 (per partition once SGLang has set it, else the full sizes)."""
    n = getattr(layer, "output_size_per_partition", None) or getattr(layer, "output_size", 0)
    k = getattr(layer, "input_size_per_partition", None) or getattr(layer, "input_size", 0)
    return n > 0 and n % decode_gemm.TILE_N == 0 and k % decode_gemm.GROUP == 0


def decode_gemm_method(layer) -> LinearMethodBase:
    """The Linear method of a draft layer: the decode GEMM where its shard fits, else the target's own."""
    if isinstance(layer, LinearBase) and decode_gemm_fits(layer):
        return DecodeGemmLinearMethod()
    return UnquantizedLinearMethod()


@torch.no_grad()
def requantize_(layer, w: torch.Tensor) -> None:  # w: [N, K] float, nn.Linear layout
    """RTN int4 of ``w`` into the layer's decode-GEMM buffers, in place."""
    decode_gemm.requantize_(layer.qweight, layer.sz, w)
