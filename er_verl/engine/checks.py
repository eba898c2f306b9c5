"""Checks of a live self-drafter against its target, and a JSONL report of them per requant.

Used by the GPU tests (through ``ER_VERL_DRAFTER_REPORT``, since the drafter lives in SGLang's scheduler
process) and for debugging. Each check says what it compared, so a failing test can print it:

* :func:`rtn_mismatches` — each int4 layer's *effective* weight, read back through its own Marlin GEMM
  with identity inputs (one non-zero product per output, so exact), against
  ``dequantize_int4(rtn_int4(target weight))``, and its Marlin buffers against those SGLang's own load
  path makes for an AWQ checkpoint of that RTN; each fp8 layer's ``q · s`` against the fp8 reference.
* :func:`unshared_tensors` — every drafter tensor whose name, shape and dtype the target also has must
  be the target's storage (same ``data_ptr``).
* :func:`kv_sharing` — the draft runner's KV pool, req_to_token pool and allocator are the target's.

These cost a GEMM per layer and host syncs: diagnostics, not for the serving path.
"""

from __future__ import annotations

import json
import time
import traceback

import torch
from torch import nn

from er_verl.draft.quantize import dequantize_fp8, dequantize_int4, quantize_fp8_per_channel, rtn_int4

CHUNK = 1024  # identity rows per GEMM when reading an int4 layer back


@torch.no_grad()
def _int4_max_diff(layer: nn.Module, w: torch.Tensor) -> float:  # w: [N, K]
    group = layer.input_size_per_partition // layer.num_groups
    scale_dtype = layer.scales.dtype if hasattr(layer, "scales") else torch.bfloat16
    ref = dequantize_int4(*rtn_int4(w, group, scale_dtype=scale_dtype), dtype=w.dtype)  # [N, K]
    k, worst = ref.shape[1], 0.0
    for start in range(0, k, CHUNK):
        rows = min(CHUNK, k - start)
        eye = torch.zeros(rows, k, dtype=w.dtype, device=w.device)  # [rows, K], one 1 per row
        eye[torch.arange(rows), start + torch.arange(rows)] = 1
        out = layer.quant_method.apply(layer, eye, None)  # [rows, N] = W_eff[:, start:start+rows]^T
        worst = max(worst, float((out.float() - ref[:, start:start + rows].t().float()).abs().max()))
    return worst


@torch.no_grad()
def _fp8_max_diff(layer: nn.Module, w: torch.Tensor) -> float:
    ref = dequantize_fp8(*quantize_fp8_per_channel(w))  # [N, K] fp32
    got = layer.weight.t().float() * layer.weight_scale.reshape(-1, 1).float()
    return float((got - ref).abs().max())


@torch.no_grad()
def _int4_buffers_differ(layer: nn.Module, w: torch.Tensor) -> list[str]:
    """Buffers that differ from the reference: for the decode GEMM ``pack(rtn_int4(w))``, for Marlin
    SGLang's own load path for an AWQ checkpoint of RTN(w)."""
    from er_verl.draft.marlin import marlin_buffers, sglang_load_path_buffers

    if hasattr(layer, "sz"):
        from er_verl.draft.decode_gemm import pack

        q, s, z = rtn_int4(w, 128, scale_dtype=torch.bfloat16)
        qweight, sz = pack(q.t(), s.t().contiguous(), z.t().contiguous())
        return [name for name, ref in (("qweight", qweight), ("sz", sz)) if not torch.equal(getattr(layer, name), ref)]

    group = layer.input_size_per_partition // layer.num_groups
    ref = sglang_load_path_buffers(w, group, params_dtype=layer.scales.dtype)
    return [name for name, tensor in marlin_buffers(layer).items() if not torch.equal(tensor, ref[name])]


def rtn_mismatches(drafter, target_model: nn.Module) -> dict:
    """Layers whose effective weight (and, int4, whose Marlin buffers) differ from the quantization of
    the target's current weight."""
    mismatched, buffers, worst = [], [], 0.0
    for entry in drafter.layers:
        w = target_model.get_submodule(entry.name).weight
        diff = (_int4_max_diff if drafter.kind == "int4" else _fp8_max_diff)(entry.layer, w)
        worst = max(worst, diff)
        if diff != 0.0:
            mismatched.append(entry.name)
        if drafter.kind == "int4":
            buffers += [f"{entry.name}.{b}" for b in _int4_buffers_differ(entry.layer, w)]
    return {"layers_checked": len(drafter.layers), "mismatched": mismatched, "max_abs_diff": worst,
            "buffers_mismatched": buffers}


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return named


def unshared_tensors(draft_model: nn.Module, target_model: nn.Module) -> dict:
    """Drafter tensors that the target also has (same name, shape, dtype) but in other storage."""
    target = _named_tensors(target_model)
    shared, unshared = [], []
    for name, tensor in _named_tensors(draft_model).items():
        ref = target.get(name)
        if ref is None or ref.shape != tensor.shape or ref.dtype != tensor.dtype:
            continue
        (shared if ref.data_ptr() == tensor.data_ptr() else unshared).append(name)
    return {"num_shared": len(shared), "not_shared": unshared, "shared_sample": shared[:6]}


def kv_sharing(draft_runner, target_runner) -> dict:
    """Whether the draft runner uses the target's pools (it must own no KV of its own)."""
    same = lambda attr: getattr(draft_runner, attr, None) is getattr(target_runner, attr, None)  # noqa: E731
    return {
        "kv_pool_shared": same("token_to_kv_pool"),
        "req_to_token_shared": same("req_to_token_pool"),
        "allocator_shared": same("token_to_kv_pool_allocator"),
        "draft_max_total_num_tokens": getattr(draft_runner, "max_total_num_tokens", None),
        "target_max_total_num_tokens": getattr(target_runner, "max_total_num_tokens", None),
    }


def target_weight_bytes(target_model: nn.Module) -> int:
    seen, total = set(), 0
    for param in target_model.parameters():
        if param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            total += param.numel() * param.element_size()
    return total


@torch.no_grad()
def target_checksum(target_model: nn.Module) -> float:
    """Sum of |w| over the target's parameters: tells whether a weight update reached the target."""
    return float(sum(p.float().abs().sum() for p in target_model.parameters()))


class ReportWriter:
    """Drafter listener: appends one JSON line of checks to ``path`` after every requant attempt.

    A check that raises is recorded under ``errors`` (with its traceback) instead of losing the line.
    """

    def __init__(self, path: str, target_runner, decode_stats=None):
        self.path = path
        self.target_runner = target_runner
        self.decode_stats = decode_stats  # the worker's DecodeStats: steps so far, and graph replays

    def checks(self, drafter, ok: bool) -> dict:
        target = self.target_runner.model
        return {
            "drafter_bytes": lambda: drafter.num_bytes(target),
            "target_weight_bytes": lambda: target_weight_bytes(target),
            "buffer_ptrs": lambda: {n: t.data_ptr() for n, t in drafter.owned_tensors(target).items()},
            "rtn": lambda: rtn_mismatches(drafter, target) if ok else None,
            "sharing": lambda: unshared_tensors(drafter.model, target),
            "kv": lambda: kv_sharing(drafter.runner, self.target_runner),
            "target_checksum": lambda: target_checksum(target),
        }

    def __call__(self, drafter, ok: bool, sources: list, seconds: float) -> None:
        line = {
            "time": time.time(), "ok": ok, "sources": list(sources), "seconds": seconds, "kind": drafter.kind,
            "num_requants": drafter.num_requants, "shared_modules": len(drafter.plan.modules),
            "linked_tensors": len(drafter.plan.links), "errors": {},
            "decode_steps": getattr(self.decode_stats, "decode_steps", None),
            "graph_steps": getattr(self.decode_stats, "graph_steps", None),
        }
        for name, check in self.checks(drafter, ok).items():
            try:
                with torch.inference_mode(False), torch.no_grad():  # decode steps run in inference mode
                    line[name] = check()
            except Exception:  # noqa: BLE001 - keep the other checks; the test prints this
                line[name] = None
                line["errors"][name] = traceback.format_exc(limit=6)
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
