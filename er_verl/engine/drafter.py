"""SelfDrafter: the policy's own quantized copy, and the dirty/requant state machine around it.

The drafter is the target's architecture whose Linear layers are W4A16 (RTN, asymmetric, group 128,
AWQ-Marlin buffers; see ``er_verl.draft``) or per-channel fp8, and whose every other tensor is the
target's (``sharing.py``). It owns only the quantized buffers, so re-making it after a weight update
is a requant of the target's live bf16 weights *into those same buffers* with ``copy_()``: addresses
never change, and CUDA graphs captured over the drafter stay valid.

Lazy protocol (architecture.md, "The drafter and weight sync"): every path that changes target weights
calls :meth:`SelfDrafter.mark_dirty`; the engine calls :meth:`SelfDrafter.refresh` before the next
speculative step, which requantizes once however many updates came in between. A failed requant logs
a warning and leaves ``ready`` False (no speculation) until the next good requant, which the next
weight update triggers.

Pure torch; sglang is reached only through duck-typed objects (layers, the draft ModelRunner).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from er_verl.draft.quantize import quantize_fp8_per_channel
from er_verl.engine.faults import Faults
from er_verl.engine.sharing import SharingPlan

logger = logging.getLogger(__name__)

FLOAT_WEIGHTS = (torch.bfloat16, torch.float16, torch.float32)
LayerRequant = Callable[[nn.Module, torch.Tensor], None]  # (draft layer, target weight [N, K]) -> None
Listener = Callable[["SelfDrafter", bool, list, float], None]  # (drafter, ok, sources, seconds)


@torch.no_grad()
def requantize_fp8_(layer: nn.Module, w: torch.Tensor) -> None:  # w: [N, K] float, nn.Linear layout
    """Per-output-channel e4m3 of ``w`` written in place into an SGLang online-fp8 layer.

    SGLang stores ``layer.weight`` as the transposed view ``q.t()`` ([K, N], float8_e4m3fn) and
    ``layer.weight_scale`` as [1, N] float32 (``fp8.py`` process_weights_after_loading).
    """
    q, s = quantize_fp8_per_channel(w)
    if tuple(layer.weight.shape) != tuple(q.t().shape) or layer.weight_scale.numel() != s.numel():
        raise ValueError(
            f"fp8 drafter layer has weight {tuple(layer.weight.shape)} and weight_scale "
            f"{tuple(layer.weight_scale.shape)}; the per-channel requant of w {tuple(w.shape)} needs "
            f"[{w.shape[1]}, {w.shape[0]}] and {w.shape[0]} scales (is SGLang's fp8 per-tensor here?)."
        )
    layer.weight.copy_(q.t())
    layer.weight_scale.copy_(s.view_as(layer.weight_scale))


@torch.no_grad()
def requantize_int4_(layer: nn.Module, w: torch.Tensor, group_size: int = 128) -> None:  # w: [N, K]
    """RTN int4 of ``w`` into the layer's Marlin buffers, and its Marlin ``workspace`` re-zeroed.

    The workspace (a per-SM lock buffer the GEMM expects zeroed) lives in the WEIGHTS memory-saver
    region like the other buffers, so after release/resume_memory_occupation it holds garbage.
    """
    from er_verl.draft.marlin import requantize_linear_

    requantize_linear_(layer, w, group_size)
    layer.workspace.zero_()


def requant_fn_for(layer: nn.Module) -> tuple[str, LayerRequant]:
    """The kind and in-place requant function of a processed drafter layer (decode GEMM, AWQ-Marlin, fp8)."""
    if hasattr(layer, "qweight") and hasattr(layer, "sz"):
        from er_verl.draft.decode_gemm import requantize_

        return "int4", lambda lay, w: requantize_(lay.qweight, lay.sz, w)
    if hasattr(layer, "qweight") and hasattr(layer, "workspace"):
        group = layer.input_size_per_partition // layer.num_groups
        return "int4", lambda lay, w: requantize_int4_(lay, w, group)
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype == torch.float8_e4m3fn:
        return "fp8", requantize_fp8_
    raise ValueError(
        f"er_verl drafter: layer {type(layer).__name__} is neither int4 (qweight + sz or workspace) nor "
        "per-channel fp8 after processing; its weights cannot be requantized in place."
    )


@dataclass
class DraftLinear:
    """One quantized drafter layer and the name of the target layer it is requantized from."""

    name: str
    layer: nn.Module
    requant: LayerRequant


def _check_source_weight(name: str, weight) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.dtype not in FLOAT_WEIGHTS:
        raise ValueError(
            f"er_verl drafter: target layer {name} has weight {getattr(weight, 'dtype', None)} "
            f"{tuple(getattr(weight, 'shape', ()))}; the drafter is requantized from 2-D bf16/fp16/fp32 weights "
            "(a quantized target cannot be its own drafter's source)."
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SelfDrafter:
    """The drafter model, its shared-tensor plan, and the dirty / ready state of its weights."""

    def __init__(self, model: nn.Module, kind: str, plan: SharingPlan, target: Optional[nn.Module] = None,
                 runner: Any = None):
        self.model = model
        self.kind = kind
        self.plan = plan
        self.target = target  # the target model it was built from (the default for the methods below)
        self.runner = runner  # the draft ModelRunner in an engine (its KV pool is the target's)
        self.layers: list[DraftLinear] = []
        self.is_dirty = True
        self.ready = False
        self.pending_sources: list[str] = ["build"]
        self.num_requants = 0
        self.forward_steps = 0  # draft forwards run, and how many replayed a CUDA graph
        self.graph_steps = 0
        self.eager_reported = False  # one diagnosis line for the first draft step that ran eagerly
        self.last_seconds: Optional[float] = None
        self.listeners: list[Listener] = []
        self.faults = Faults.from_env()  # ER_VERL_FAULT: injected requant failures (reliability tests)

    # ---------------------------------------------------------------- building

    def bind_layers(self, names: list[str]) -> None:
        """Record the quantized layers (by module name, which is also the target layer's name)."""
        self.layers = []
        for name in names:
            layer = self.model.get_submodule(name)
            _, fn = requant_fn_for(layer)
            if self.target is not None:
                _check_source_weight(name, getattr(self.target.get_submodule(name), "weight", None))
            self.layers.append(DraftLinear(name, layer, fn))

    # ---------------------------------------------------------------- the lazy protocol

    def mark_dirty(self, source: str) -> None:
        """Target weights changed through ``source``: requantize before the next speculative step."""
        self.is_dirty = True
        self.pending_sources.append(source)

    @torch.no_grad()
    def requantize_(self, target_model: Optional[nn.Module] = None) -> float:
        """Requantize every drafter Linear from ``target_model``'s (default: ``self.target``'s) current
        weights, in place.

        Synchronizes the device before and after (one host sync per weight sync) and returns the
        elapsed seconds. Raises on the first layer that cannot be requantized.
        """
        target_model = target_model if target_model is not None else self.target
        device = self._device()
        _sync(device)
        start = time.perf_counter()
        self.plan.relink_()
        for entry in self.layers:
            weight = target_model.get_submodule(entry.name).weight  # [N, K] this rank's shard
            entry.requant(entry.layer, weight)
        _sync(device)
        return time.perf_counter() - start

    def refresh(self, target_model: Optional[nn.Module] = None) -> bool:
        """Requantize if dirty (once, for all pending updates). Returns ``ready``; never raises."""
        if not self.is_dirty:
            return self.ready
        sources, self.pending_sources, self.is_dirty = self.pending_sources, [], False
        try:
            self.faults.check("requant")
            seconds = self.requantize_(target_model)
        except Exception as exc:  # noqa: BLE001 - a rollout must go on without speculation
            self.ready = False
            logger.warning(
                "er_verl: drafter requant failed (%s); speculation off until the next good requant", exc, exc_info=True
            )
            print(f"er_verl[scheduler]: WARNING drafter requant failed: {exc!r}; decoding plainly", flush=True)
            self._notify(False, sources, float("nan"))
            return False
        self.ready, self.last_seconds = True, seconds
        self.num_requants += 1
        print(f"er_verl[scheduler]: drafter ({self.kind}, {len(self.layers)} layers) requantized in "
              f"{seconds * 1e3:.1f} ms after {_summary(sources)}", flush=True)
        self._notify(True, sources, seconds)
        return True

    def _notify(self, ok: bool, sources: list, seconds: float) -> None:
        for listener in list(self.listeners):
            try:
                listener(self, ok, sources, seconds)
            except Exception:  # noqa: BLE001 - reporting never breaks decoding
                logger.warning("er_verl: drafter listener %r failed", listener, exc_info=True)

    # ---------------------------------------------------------------- inspection and use

    def owned_tensors(self, target_model: Optional[nn.Module] = None) -> dict[str, torch.Tensor]:
        """Tensors the drafter owns (not the target's): its quantized buffers and their workspaces."""
        target_model = target_model if target_model is not None else self.target
        target_ptrs = {t.data_ptr() for t in _all_tensors(target_model).values()}
        return {n: t for n, t in _all_tensors(self.model).items() if t.data_ptr() not in target_ptrs}

    def num_bytes(self, target_model: Optional[nn.Module] = None) -> int:
        """Bytes the drafter owns (shared tensors excluded), counting each storage once."""
        seen, total = set(), 0
        for tensor in self.owned_tensors(target_model).values():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
        return total

    def forward(self, forward_batch: Any):
        """One draft forward through the draft ModelRunner: ``runner.forward(batch).logits_output``.

        Contract for the caller (issue 4): ``forward_batch`` is built for the draft runner
        (``ForwardBatch.init_new(batch, drafter.runner)``); its KV pool is the target's, so the drafter
        reads the target's KV and writes its own K/V for the new positions into ``out_cache_loc``,
        which must be slots the target's verify pass overwrites.
        """
        if self.runner is None:
            raise RuntimeError("this SelfDrafter has no draft ModelRunner (built outside an engine)")
        out = self.runner.forward(forward_batch)
        self.forward_steps += 1
        replayed = bool(getattr(out, "can_run_graph", False))
        self.graph_steps += replayed
        if not replayed and not self.eager_reported:
            self.eager_reported = True
            print(f"er_verl[scheduler]: WARNING a draft step ran eagerly: {_why_eager(self.runner, forward_batch)}",
                  flush=True)
        return out.logits_output

    def _device(self) -> torch.device:
        if self.layers:
            return next(t for _, _, t in _layer_tensors(self.layers[0].layer)).device
        return torch.device("cpu")


def _why_eager(runner: Any, forward_batch: Any) -> str:
    """What the draft runner's decode graph runner saw in a batch it did not replay (a diagnosis line)."""
    graphs = getattr(runner, "decode_cuda_graph_runner", None)
    facts = {"graph_runner": type(graphs).__name__ if graphs is not None else None,
             "forward_mode": getattr(forward_batch, "forward_mode", None),
             "batch_size": getattr(forward_batch, "batch_size", None),
             "capture_hidden_mode": getattr(forward_batch, "capture_hidden_mode", None)}
    if graphs is not None:
        facts.update(max_bs=getattr(graphs, "max_bs", None),
                     graph_capture_hidden_mode=getattr(graphs, "capture_hidden_mode", None))
        try:
            facts["can_run_graph"] = graphs.can_run_graph(forward_batch)
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not raise
            facts["can_run_graph"] = repr(exc)
    return ", ".join(f"{k}={v}" for k, v in facts.items())


def _layer_tensors(layer: nn.Module):
    for store in ("_parameters", "_buffers"):
        for name, tensor in getattr(layer, store).items():
            if tensor is not None:
                yield store, name, tensor


def _all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, buffers and plain tensor attributes (Marlin ``workspace``/``g_idx``), by name."""
    out = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for _, name, tensor in _layer_tensors(module):
            out[prefix + name] = tensor
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value
    return {n: t for n, t in out.items() if not t.is_meta and t.numel() > 0}


def _summary(sources: list) -> str:
    counts: dict[str, int] = {}
    for source in sources:
        counts[source] = counts.get(source, 0) + 1
    return ", ".join(f"{s}×{n}" if n > 1 else s for s, n in counts.items()) or "nothing"
