"""How the drafter's AWQ-Marlin Linears call the Marlin GEMM: SGLang's call, or the same GEMM with another
cross-block reduction (``ER_VERL_MARLIN_REDUCE``).

SGLang's ``apply_awq_marlin_linear`` reduces the K-slices of each output tile through an fp32 scratch
buffer (``use_fp32_reduce=True``) and uses atomic adds only for N < 2048. At decode batch sizes the
drafter's GEMMs are latency-bound (the 2026-11-25 profile on the H200: 59 us per decoder layer where the
weight bytes need ~28 us), so the reduction matters. Modes:

* ``fp32``: SGLang's own call (the default until another mode is measured faster on the GPU);
* ``bf16``: the same GEMM with ``use_fp32_reduce=False`` (partial sums reduced in bf16);
* ``atomic``: ``use_atomic_add=True`` and ``use_fp32_reduce=False`` (K-slices added atomically into C).

Only the drafter's proposals q change (by bf16 rounding); exactness never depends on q, since the
verify step accepts with min(1, p/q) against the q the drafter actually produced.
"""

from __future__ import annotations

import os

MARLIN_ENV = "ER_VERL_MARLIN_REDUCE"
MODES = ("fp32", "bf16", "atomic")


def marlin_mode(environ=os.environ) -> str:
    raw = environ.get(MARLIN_ENV, "").strip() or "fp32"
    if raw not in MODES:
        raise ValueError(f"{MARLIN_ENV}={raw!r}: expected one of {list(MODES)}")
    return raw


class MarlinApply:
    """A drafter layer's ``quant_method`` stand-in: the wrapped method for everything, ``apply`` with ``mode``."""

    def __init__(self, inner, mode: str, gemm=None, quant_type=None):
        if mode not in MODES:
            raise ValueError(f"Marlin reduce mode {mode!r}: expected one of {list(MODES)}")
        self.inner, self.mode = inner, mode
        self._gemm, self._quant_type = gemm, quant_type

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def apply(self, layer, x, bias=None):
        if self.mode == "fp32":
            return self.inner.apply(layer, x, bias)
        gemm, quant_type = self._kernel()
        flat = x.reshape(-1, x.shape[-1])
        out = gemm(flat, None, layer.qweight, layer.scales, None, layer.qzeros, layer.g_idx,
                   layer.g_idx_sort_indices, layer.workspace, quant_type, size_m=flat.shape[0],
                   size_n=layer.output_size_per_partition, size_k=layer.input_size_per_partition,
                   use_atomic_add=self.mode == "atomic", use_fp32_reduce=False, is_zp_float=False)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], layer.output_size_per_partition)

    def _kernel(self):
        if self._gemm is None:
            from sglang.jit_kernel.gptq_marlin import gptq_marlin_gemm

            from er_verl.draft.marlin import awq_marlin_config

            self._gemm, self._quant_type = gptq_marlin_gemm, awq_marlin_config().quant_type
        return self._gemm, self._quant_type


def install(layers, mode: str) -> int:
    """Wrap the ``quant_method`` of each int4 drafter layer (``DraftLinear.layer``) for ``mode``; returns how
    many were wrapped (0 for ``fp32``, SGLang's own call, or for fp8 layers)."""
    if mode == "fp32":
        return 0
    count = 0
    for entry in layers:
        layer = entry.layer
        if hasattr(layer, "qweight") and hasattr(layer, "workspace") and not isinstance(layer.quant_method, MarlinApply):
            layer.quant_method = MarlinApply(layer.quant_method, mode)
            count += 1
    return count
