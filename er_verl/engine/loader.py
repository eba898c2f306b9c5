"""SGLang side of building the self-drafter: from the target model in memory, never from a checkpoint.

SGLang builds a draft model inside ``ModelRunner.load_model`` through ``get_model_loader(load_config,
model_config)``. The AROUND hook :func:`get_model_loader_around` returns :class:`SelfDraftLoader` for
the draft ``model_config`` while a target is registered with :func:`draft_source` (the self-draft
worker does this around its own construction), and SGLang's loader otherwise. Using a hook rather than
``speculative_draft_load_format`` keeps ``server_args.load_format`` untouched (the scheduler overwrites
it with the draft's format, pitfall 21, which would change how the *target* reloads from disk).

The loader builds the target's architecture on the ``meta`` device with a quantizing config and aliases
everything unquantized to the target (``sharing.py``): **no device memory** is used before the
target's KV pool is profiled, so the token capacity equals plain SGLang's. The quantized buffers are
allocated later by :func:`materialize_drafter_` (called once the target's KV pool exists) inside the
WEIGHTS memory-saver region, so release/resume_memory_occupation frees and restores them like the
target's weights (their contents are then requantized; nothing is backed up to the CPU).

The draft's quantization comes from ``server_args.speculative_draft_model_quantization``:
``awq_marlin`` (or unset) gives int4, ``fp8`` gives SGLang's online per-channel fp8. Both configs are
built here, so no ``quantize_config.json`` is looked up (stock ``get_quant_config`` raises for it) and
no hook on ``get_quant_config`` is needed.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from sglang.srt.constants import GPU_MEMORY_TYPE_WEIGHTS
from sglang.srt.layers.linear import LinearBase
from sglang.srt.layers.quantization.awq.awq import AWQMarlinConfig
from sglang.srt.layers.quantization.fp8 import Fp8Config
from sglang.srt.layers.quantization.marlin_utils import check_marlin_supports_layer
from sglang.srt.layers.quantization.unquant import UnquantizedEmbeddingMethod, UnquantizedLinearMethod
from sglang.srt.model_loader.loader import BaseModelLoader, _initialize_model
from sglang.srt.model_loader.utils import get_model_architecture, set_default_torch_dtype
from torch import nn

from er_verl.engine.drafter import SelfDrafter
from er_verl.engine.int4_linear import decode_gemm_method, int4_gemm
from er_verl.engine.sharing import materialize_, share_with_target_

GROUP_SIZE = 128
DRAFT_KINDS = {None: "int4", "awq_marlin": "int4", "fp8": "fp8"}
SHARED_KV_ATTR = "er_verl_shared_kv_pool"  # set on a draft ModelRunner: its KV pool is this one
_TARGET: contextvars.ContextVar = contextvars.ContextVar("er_verl_draft_target", default=None)


class SelfDraftAWQConfig(AWQMarlinConfig):
    """RTN W4 (group 128, zero points) for every Linear: er_verl's decode GEMM (``int4_linear.py``), or
    with ``ER_VERL_INT4_GEMM=marlin`` SGLang's AWQ-Marlin for every Linear that Marlin can run.

    A Linear that Marlin cannot run (N % 64 or K % 128) stays unquantized, i.e. it becomes the target's
    own layer (shared), instead of SGLang's silent fallback to the slow non-Marlin AWQ kernel.
    """

    def __init__(self, group_size: int = GROUP_SIZE):
        full = {"bits": 4, "group_size": group_size, "zero_point": True, "quant_method": "awq"}
        super().__init__(4, group_size, True, False, None, full)

    def get_quant_method(self, layer, prefix):
        if isinstance(layer, LinearBase) and int4_gemm() == "decode":
            return decode_gemm_method(layer)
        if isinstance(layer, LinearBase) and not check_marlin_supports_layer(layer, self.group_size):
            return UnquantizedLinearMethod()
        return super().get_quant_method(layer, prefix)


class SelfDraftFp8Config(Fp8Config):
    """SGLang's online fp8 (per-channel weights, dynamic per-token activations) for Linear layers only.

    Stock ``Fp8Config`` also gives attention layers a KV-cache scale method whose ``k_scale``/``v_scale``
    start at -1 (a sentinel): built on meta they cannot keep that value, and the drafter shares the
    target's bf16 KV cache anyway.
    """

    def get_quant_method(self, layer, prefix):
        return super().get_quant_method(layer, prefix) if isinstance(layer, LinearBase) else None


def is_quantized(module: nn.Module) -> bool:
    """True for a layer whose quant method changes its weights (AWQ-Marlin, fp8)."""
    method = getattr(module, "quant_method", None)
    return method is not None and not isinstance(method, (UnquantizedLinearMethod, UnquantizedEmbeddingMethod))


def draft_kind(quantization) -> str:
    """``int4`` or ``fp8`` from the draft ModelConfig's quantization string."""
    if quantization not in DRAFT_KINDS:
        raise ValueError(
            f"speculative_draft_model_quantization={quantization!r} is not a self-drafter kind: allowed are "
            "'awq_marlin' (int4, the default) and 'fp8'."
        )
    return DRAFT_KINDS[quantization]


def build_self_drafter(target_model: nn.Module, model_config, load_config, kind: str) -> SelfDrafter:
    """The drafter on ``meta``, everything unquantized aliased to ``target_model`` (no device memory)."""
    model_class, _ = get_model_architecture(model_config)
    if model_class is not type(target_model):
        raise ValueError(
            f"er_verl's self-drafter must be the target's own architecture {type(target_model).__name__}, but "
            f"SGLang builds the draft as {model_class.__name__} (an MTP head, pitfall 17); unsupported model."
        )
    quant_config = SelfDraftAWQConfig() if kind == "int4" else SelfDraftFp8Config()
    with set_default_torch_dtype(model_config.dtype), torch.device("meta"):
        model = _initialize_model(model_config, load_config, quant_config)
    plan = share_with_target_(model, target_model, is_quantized)
    return SelfDrafter(model.eval(), kind, plan, target=target_model)


def materialize_drafter_(drafter: SelfDrafter, target_model: nn.Module, memory_saver=None) -> None:
    """Allocate the drafter's own buffers, convert them to their kernel layout, bind its layers.

    The pre-conversion buffers are plain allocations (freed right after); the converted ones are made
    inside ``memory_saver``'s WEIGHTS region when one is given. Call before CUDA-graph capture.
    """
    device = next(target_model.parameters()).device

    def region():
        if memory_saver is None:
            return contextlib.nullcontext()
        return memory_saver.region(GPU_MEMORY_TYPE_WEIGHTS, enable_cpu_backup=False)

    def process(module: nn.Module) -> None:
        with region():
            module.quant_method.process_weights_after_loading(module)

    with torch.inference_mode(False):
        materialize_(drafter.model, target_model, device, is_quantized, process)
    drafter.plan.prune_()
    target_ids = {id(m) for m in target_model.modules()}
    names = [n for n, m in drafter.model.named_modules() if id(m) not in target_ids and is_quantized(m)]
    drafter.bind_layers(names)
    if device.type == "cuda":
        torch.cuda.empty_cache()


class SelfDraftLoader(BaseModelLoader):
    """A model loader whose model is the self-drafter of ``target_model`` (kept as ``self.drafter``)."""

    def __init__(self, load_config, target_model: nn.Module):
        super().__init__(load_config)
        self.target_model = target_model
        self.drafter: SelfDrafter | None = None

    def download_model(self, model_config) -> None:
        pass  # nothing is read: the drafter is made from the target in memory

    def load_model(self, *, model_config, device_config) -> nn.Module:
        kind = draft_kind(model_config.quantization)
        self.drafter = build_self_drafter(self.target_model, model_config, self.load_config, kind)
        return self.drafter.model


@contextlib.contextmanager
def draft_source(target_model: nn.Module):
    """While active, SGLang's draft model in this thread is the self-drafter of ``target_model``."""
    token = _TARGET.set(target_model)
    try:
        yield
    finally:
        _TARGET.reset(token)


def get_model_loader_around(original, load_config, model_config=None):
    """AROUND ``sglang.srt.model_loader.loader.get_model_loader``: the self-draft loader for the draft."""
    target = _TARGET.get()
    if target is not None and model_config is not None and getattr(model_config, "is_draft_model", False):
        return SelfDraftLoader(load_config, target)
    return original(load_config, model_config)


def init_pools_around(original, runner):
    """AROUND ``ModelRunnerKVCacheMixin._init_pools``: a runner tagged with ``SHARED_KV_ATTR`` takes that
    KV pool instead of allocating one (req_to_token pool and allocator are already the target's)."""
    shared = getattr(runner, SHARED_KV_ATTR, None)
    if shared is None:
        return original(runner)
    runner.token_to_kv_pool = shared
