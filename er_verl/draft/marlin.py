"""GPU glue: requantize an SGLang AWQ-Marlin Linear layer in place from a bf16 weight.

A layer built by `AWQMarlinLinearScheme.create_weights` and converted by
`AWQMarlinLinearKernel.process_weights_after_loading` (sglang-0.5.14-seams.md §b1) holds, per
TP shard with K inputs, N outputs and G = 128:

* ``qweight`` int32 [K/16, 2N]: `awq_marlin_repack(pack_awq(q), K, N, 4)`
* ``scales``  bf16 [K/G, N]:   `marlin_permute_scales(s, K, N, G)`
* ``qzeros``  int32 [K/G, N/8]: `awq_to_marlin_zero_points(pack_awq(z), K/G, N, 4)`
  (= `marlin_zero_points(z, K/G, N, 4)`, which skips the pack/unpack round trip)

`requantize_linear_` writes exactly these in place (``.copy_()``; for a CUDA weight, `fused.py`'s
one-pass Triton kernel and the repack write straight into them), so buffer addresses (and captured
CUDA graphs) stay valid. It allocates temporaries, so call it outside graph capture. sglang is imported
lazily: this module imports on a CPU-only machine.
"""

from __future__ import annotations

import torch

from er_verl.draft.quantize import (
    AWQ_ORDER,
    check_marlin_shape,
    marlin_permute_scales,
    marlin_zero_points,
    pack_awq,
    rtn_int4,
)

MARLIN_BUFFERS = ("qweight", "scales", "qzeros")
USE_FUSED_REQUANT = True  # requantize_linear_ of a CUDA weight through fused.py's Triton kernel


def marlin_buffers(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The three tensors a requant rewrites, by name."""
    return {name: getattr(layer, name) for name in MARLIN_BUFFERS}


def _check_layer(layer: torch.nn.Module, w: torch.Tensor, group_size: int) -> tuple[int, int]:
    k, n = layer.input_size_per_partition, layer.output_size_per_partition
    check_marlin_shape(n, k, group_size)
    if tuple(w.shape) != (n, k):
        raise ValueError(f"w has shape {tuple(w.shape)}; this layer's shard needs [N_out, K_in] = [{n}, {k}].")
    if layer.num_groups != k // group_size:
        raise ValueError(
            f"group_size = {group_size} gives {k // group_size} groups, but the layer has {layer.num_groups}."
        )
    if tuple(layer.qweight.shape) != (k // 16, 2 * n):
        raise ValueError(
            f"layer.qweight has shape {tuple(layer.qweight.shape)}, not the Marlin shape [{k // 16}, {2 * n}]; "
            "run SGLang's process_weights_after_loading before requantizing."
        )
    if w.device != layer.qweight.device:
        raise ValueError(f"w is on {w.device} but the layer's buffers are on {layer.qweight.device}.")
    return k, n


@torch.no_grad()
def requantize_linear_(
    layer: torch.nn.Module,
    w: torch.Tensor,  # [N, K] float (bf16), the target's weight shard in nn.Linear layout
    group_size: int = 128,
) -> None:
    """RTN int4 of `w` (see `quantize.rtn_int4`) written in place into the layer's Marlin buffers.

    No host sync. The first call JIT-compiles `awq_marlin_repack` (pitfall 16) and, for a CUDA `w`,
    the Triton kernel of `fused.py`: warm it before graph capture. A CUDA `w` (fp32/bf16/fp16) takes
    the one-pass fused path (`fused.requantize_marlin_`, bit-identical, USE_FUSED_REQUANT = False
    turns it off); otherwise the eager torch path below, the reference. Raises ValueError if the
    layer is not a processed AWQ-Marlin layer of w's shape.
    """
    from sglang.jit_kernel.awq_marlin_repack import awq_marlin_repack

    k, n = _check_layer(layer, w, group_size)
    if USE_FUSED_REQUANT and w.is_cuda and w.dtype in (torch.float32, torch.bfloat16, torch.float16):
        from er_verl.draft.fused import requantize_marlin_

        requantize_marlin_(layer.qweight, layer.scales, layer.qzeros, w, group_size)
        return
    q, s, z = rtn_int4(w, group_size, scale_dtype=layer.scales.dtype)
    layer.qweight.copy_(awq_marlin_repack(pack_awq(q), size_k=k, size_n=n, num_bits=4))
    layer.scales.copy_(marlin_permute_scales(s, k, n, group_size))
    layer.qzeros.copy_(marlin_zero_points(z, k // group_size, n, 4))


def awq_marlin_config(group_size: int = 128):
    """`AWQMarlinConfig(4 bit, group_size, zero_point=True)`, the drafter's quantization config."""
    from sglang.srt.layers.quantization.awq.awq import AWQMarlinConfig

    full = {"bits": 4, "group_size": group_size, "zero_point": True, "quant_method": "awq"}
    return AWQMarlinConfig(4, group_size, True, False, None, full)


def build_awq_marlin_linear(
    k: int,
    n: int,
    group_size: int = 128,
    params_dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cuda",
) -> torch.nn.Module:
    """An SGLang `ReplicatedLinear(K → N)` whose quant method is AWQ-Marlin; buffers not yet loaded."""
    from sglang.srt.layers.linear import ReplicatedLinear

    check_marlin_shape(n, k, group_size)
    with torch.device(device):
        return ReplicatedLinear(
            k, n, bias=False, params_dtype=params_dtype, quant_config=awq_marlin_config(group_size)
        )


@torch.no_grad()
def load_like_sglang_(
    layer: torch.nn.Module,  # fresh from `build_awq_marlin_linear`, not yet processed
    w: torch.Tensor,  # [N, K] float (bf16), nn.Linear layout
    group_size: int = 128,
) -> None:
    """Test reference: load the RTN of `w` the way SGLang loads an AWQ checkpoint.

    The codes become an AWQ checkpoint packed by SGLang's numpy `pack_cols` (columns reordered by
    AWQ_ORDER first), go through the layer's `weight_loader`, then through SGLang's
    `process_weights_after_loading`, which replaces the Parameters. CPU helpers: slow, tests only.
    """
    from sglang.srt.layers.quantization.utils import pack_cols

    n, k = w.shape
    q, s, z = rtn_int4(w, group_size, scale_dtype=layer.scales.dtype)

    def awq_pack(x: torch.Tensor) -> torch.Tensor:  # [R, N] -> [R, N/8]
        rows = x.shape[0]
        reordered = x.to(torch.int32).contiguous().reshape(-1, 8)[:, list(AWQ_ORDER)].reshape(rows, n)
        return pack_cols(reordered, 4, rows, n)

    checkpoint = {"qweight": awq_pack(q), "qzeros": awq_pack(z), "scales": s}
    for name, tensor in checkpoint.items():
        layer.weight_loader(getattr(layer, name), tensor)
    layer.quant_method.process_weights_after_loading(layer)


def sglang_load_path_buffers(
    w: torch.Tensor,  # [N, K] float (bf16), nn.Linear layout
    group_size: int = 128,
    params_dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """The Marlin buffers SGLang's own load path gives for the RTN of `w` (a fresh layer)."""
    n, k = w.shape
    layer = build_awq_marlin_linear(k, n, group_size, params_dtype, device=w.device)
    load_like_sglang_(layer, w, group_size)
    return marlin_buffers(layer)
