"""Alias a meta-built drafter onto its target, so the drafter owns only its quantized Linear buffers.

The drafter is the target's own architecture built on the ``meta`` device (no memory) with a
quantizing config. Everything it does not quantize must *be* the target's tensor, not a copy:

1. Module sharing (:func:`share_modules_`). A draft submodule is replaced by the same-named target
   module object when its whole subtree (a) holds at least one tensor, (b) holds only tensors that the
   target has under the same name with equal shape and dtype, and (c) contains no quantizing layer.
   This catches embeddings, lm_head (also when tied: the draft's ``lm_head`` becomes the target's
   ``lm_head``, which *is* the target's embedding module), norms and rotary embeddings. Sharing the
   module rather than its tensors keeps the alias valid when the target re-binds or grows a buffer
   (``RotaryEmbedding._ensure_cos_sin_cache_length`` allocates a longer ``cos_sin_cache``), and it
   never calls SGLang's ``set_embed_and_head``, whose ``del`` fails for tied models (pitfall 18).
2. Tensor links (:func:`link_tensors_`). Inside the quantizing layers, every tensor the target layer
   has under the same name, shape and dtype (biases; fp8's bf16 ``weight`` before processing) is set
   to the target's tensor. :meth:`SharingPlan.relink_` repeats this at each requant, in case a weight
   update re-bound a target Parameter.
3. What is still on ``meta`` is the drafter's own: :func:`materialize_` allocates it (zeros) and runs
   each quantizing layer's ``process_weights_after_loading``.

Pure torch (duck-typed on ``quant_method``): the tests run it on small fake modules on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

STORES = ("_parameters", "_buffers")
IsQuantized = Callable[[nn.Module], bool]


@dataclass(frozen=True)
class TensorLink:
    """Draft ``module.<store>[name]`` is the target module's tensor of the same name."""

    draft: nn.Module
    target: nn.Module
    store: str
    name: str

    def relink_(self) -> None:
        getattr(self.draft, self.store)[self.name] = getattr(self.target, self.store)[self.name]

    def is_linked(self) -> bool:
        return getattr(self.draft, self.store).get(self.name) is getattr(self.target, self.store).get(self.name)


@dataclass
class SharingPlan:
    """What the drafter shares with the target: whole modules by name, and single tensors."""

    modules: list[str] = field(default_factory=list)
    links: list[TensorLink] = field(default_factory=list)

    def relink_(self) -> None:
        for link in self.links:
            link.relink_()

    def prune_(self) -> None:
        """Drop links whose draft tensor was re-bound since (fp8 processing replaces the aliased bf16
        ``weight`` by the drafter's own fp8 one: re-linking it would undo the quantization)."""
        self.links = [link for link in self.links if link.is_linked()]


def local_tensors(module: nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(store, name, tensor) for the module's own parameters and buffers (not its children's)."""
    for store in STORES:
        for name, tensor in getattr(module, store).items():
            if tensor is not None:
                yield store, name, tensor


def _same_slot(tensor: torch.Tensor, ref) -> bool:
    return isinstance(ref, torch.Tensor) and ref.shape == tensor.shape and ref.dtype == tensor.dtype


def _target_tensor(target: nn.Module | None, store: str, name: str):
    return None if target is None else getattr(target, store).get(name)


def subtree_shareable(draft: nn.Module, target: nn.Module, is_quantized: IsQuantized) -> bool:
    """True iff every tensor under ``draft`` has an equal-shaped twin under ``target`` (and there is one)."""
    targets = dict(target.named_modules(remove_duplicate=False))
    seen_tensor = False
    for name, sub in draft.named_modules(remove_duplicate=False):
        if is_quantized(sub):
            return False
        for store, key, tensor in local_tensors(sub):
            seen_tensor = True
            if not _same_slot(tensor, _target_tensor(targets.get(name), store, key)):
                return False
    return seen_tensor


def share_modules_(
    draft: nn.Module, target: nn.Module, is_quantized: IsQuantized, prefix: str = "", replaced: dict | None = None
) -> list[str]:
    """Replace shareable draft submodules by the target's module objects; returns their names.

    ``replaced`` (id of the draft module → its target twin) collects what was swapped, so that
    :func:`rebind_references_` can fix helpers that captured the draft module at construction.
    """
    shared = []
    for name, child in list(draft._modules.items()):
        twin = target._modules.get(name)
        if child is None or twin is None or type(child) is not type(twin):
            continue
        if child is twin or subtree_shareable(child, twin, is_quantized):
            draft._modules[name] = twin
            shared.append(prefix + name)
            if replaced is not None and child is not twin:
                replaced[id(child)] = twin
        else:
            shared += share_modules_(child, twin, is_quantized, prefix + name + ".", replaced)
    return shared


def rebind_references_(draft: nn.Module, replaced: dict) -> int:
    """Point plain-object attributes of draft modules at the shared twins; returns how many were fixed.

    Some SGLang layers hand their submodules to a helper object at construction, e.g. Qwen3's
    decoder layer builds ``LayerCommunicator(input_layernorm=..., post_attention_layernorm=...)``,
    which then runs those norms. Swapping ``_modules`` alone would leave the helper calling the draft's
    meta-device norms (seen on the H200: "Cannot pack tensors on meta" in rmsnorm).
    """
    fixed = 0
    for module in draft.modules():
        for value in vars(module).values():
            if isinstance(value, (nn.Module, torch.Tensor)) or not hasattr(value, "__dict__"):
                continue
            for key, ref in list(vars(value).items()):
                if id(ref) in replaced:
                    setattr(value, key, replaced[id(ref)])
                    fixed += 1
    return fixed


def link_tensors_(draft: nn.Module, target: nn.Module) -> list[TensorLink]:
    """Point the remaining draft modules' tensors at their same-named, same-shaped target tensors."""
    targets = dict(target.named_modules(remove_duplicate=False))
    links = []
    for name, module in draft.named_modules(remove_duplicate=False):
        twin = targets.get(name)
        if twin is None or twin is module:
            continue
        for store, key, tensor in list(local_tensors(module)):
            ref = _target_tensor(twin, store, key)
            if _same_slot(tensor, ref):
                link = TensorLink(module, twin, store, key)
                link.relink_()
                links.append(link)
    return links


def share_with_target_(draft: nn.Module, target: nn.Module, is_quantized: IsQuantized) -> SharingPlan:
    """Module sharing, then tensor links (module docstring). The draft is modified in place."""
    replaced: dict = {}
    modules = share_modules_(draft, target, is_quantized, replaced=replaced)
    rebind_references_(draft, replaced)
    return SharingPlan(modules=modules, links=link_tensors_(draft, target))


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of tensors still on ``meta``: parameters, buffers and plain tensor attributes."""
    names = []
    for mod_name, module in model.named_modules():
        for store, key, tensor in local_tensors(module):
            if tensor.is_meta:
                names.append(f"{mod_name}.{key}".lstrip("."))
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                names.append(f"{mod_name}.{key}".lstrip("."))
    return names


def _allocate_like(tensor: torch.Tensor, store: str, device) -> torch.Tensor:
    new = torch.zeros(tensor.shape, dtype=tensor.dtype, device=device)
    return nn.Parameter(new, requires_grad=False) if store == "_parameters" else new


@torch.no_grad()
def materialize_(
    model: nn.Module,
    target: nn.Module,
    device,
    is_quantized: IsQuantized,
    process: Callable[[nn.Module], None],
) -> list[str]:
    """Allocate every ``meta`` tensor of the drafter on ``device`` (zeros), then ``process`` each
    quantizing draft-owned layer (SGLang's ``process_weights_after_loading``: Marlin repack, fp8
    quantization). Returns the allocated names. Raises RuntimeError naming any tensor left on meta."""
    target_modules = {id(m) for m in target.modules()}
    owned = []
    for mod_name, module in model.named_modules():
        for store, key, tensor in list(local_tensors(module)):
            if tensor.is_meta:
                getattr(module, store)[key] = _allocate_like(tensor, store, device)
                owned.append(f"{mod_name}.{key}".lstrip("."))
    for module in model.modules():
        if id(module) not in target_modules and is_quantized(module):
            process(module)
    left = meta_tensors(model)
    if left:
        raise RuntimeError(f"er_verl drafter: tensors left on the meta device after building it: {left[:8]}")
    return owned
