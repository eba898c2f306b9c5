"""The self-quantized drafter: a W4A16 (or fp8) copy of the policy's own Linear weights.

`quantize` holds the pure-torch math (RTN int4 with AWQ packing, the Marlin layout conversions,
per-channel fp8); `marlin` writes its results into the live buffers of SGLang's AWQ-Marlin layers.
"""
