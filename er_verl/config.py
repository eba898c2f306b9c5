"""EfficientConfig: the one typed config of er_verl, and its launch-time validation.

Users set it under ``actor_rollout_ref.rollout.custom.efficient.*`` (``rollout.custom`` is verl's
official extension dict; it is absent from verl's YAML, hence the Hydra ``+`` prefix on the command
line unless a recipe YAML declares it):

    +actor_rollout_ref.rollout.custom.efficient.max_draft_len=5

Every invalid value raises ``ValueError`` with a sentence that names the key, the value and what is
allowed. This module imports neither sglang nor verl: it reads duck-typed config objects.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

CONFIG_PREFIX = "actor_rollout_ref.rollout.custom.efficient"
DRAFTERS = ("int4", "fp8")
GATE_MODES = ("auto", "always", "never")
DRAFT_ATTENTIONS = ("flashinfer", "triton")
MIN_DRAFT_KV_WINDOW, MAX_DRAFT_KV_WINDOW = 64, 1 << 20  # EfficientConfig.draft_kv_window when not 0


@dataclass(frozen=True)
class EfficientConfig:
    """Settings of the efficient_sglang rollout backend (all optional)."""

    speculate: bool = True
    """Self-speculative decoding on (True) or plain SGLang decoding (False). Where the installed
    engine has no self-speculative worker, True falls back to plain decoding with one warning."""

    drafter: str = "int4"
    """Drafter weights: ``int4`` (W4A16 RTN, asymmetric, group 128, AWQ-Marlin) or ``fp8``
    (per-output-channel e4m3 weights), both re-made from the policy at every weight sync."""

    max_draft_len: int = 7
    """Kmax: the largest draft length K the engine prepares (CUDA graphs for K = 0..Kmax). 1..16."""

    gate: str = "auto"
    """``auto``: speculate only while the cost model predicts a gain for the running batch;
    ``always``: speculate at every batch size (for measurements); ``never``: plain decoding."""

    gate_margin: float = 0.05
    """The gate switches speculation on only when predicted speedup > 1 + gate_margin. [0, 1)."""

    bandit: bool = True
    """Choose K per request group (GRPO uid) with a Thompson bandit; False uses one batch-wide K."""

    sync_discount: float = 0.5
    """Factor applied to every group's acceptance posterior at each weight sync. (0, 1]."""

    calibration_path: Optional[str] = None
    """Optional JSON of a saved cost-model calibration; without it the model calibrates online."""

    seed: int = 0
    """Seed of the controller's random generator (the bandit's Thompson draws). >= 0."""

    draft_kv_window: int = 0
    """0: a draft step attends to the whole context. W >= 64: it attends to each request's first 4 positions
    and its last W (``engine/draft_window.py``); the verify pass still reads everything, so outputs keep the
    target's distribution, but acceptance may drop. For long contexts, where a draft step's attention reads
    as much KV as a target step. Its effect on real acceptance is not measured yet."""

    draft_attention: str = "flashinfer"
    """SGLang attention backend of the draft steps (the verify pass always uses FlashInfer). ``triton`` plans
    its decode split on the GPU, so a full-context round can launch its drafts before the previous round's
    new lengths reach the host (``engine/sync_free.py``); ``flashinfer`` needs those lengths, unless a
    ``draft_kv_window`` fixes them. ``triton`` cannot be combined with ``draft_kv_window``."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _key(name: str) -> str:
    return f"{CONFIG_PREFIX}.{name}"


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{_key(name)}={value!r} is invalid: allowed is {allowed}.")


def _check_types(raw: Mapping[str, Any]) -> None:
    hints = {f.name: f.type for f in dataclasses.fields(EfficientConfig)}
    expected = {"bool": bool, "str": str, "int": int, "float": (int, float)}
    for name, value in raw.items():
        hint = hints[name]
        if hint == "Optional[str]":
            if value is not None and not isinstance(value, str):
                raise _bad(name, value, "a file path string or null")
            continue
        want = expected[hint]
        # bool is an int subclass: reject True for ints/floats and 1 for bools.
        wrong_bool = isinstance(value, bool) != (hint == "bool")
        if not isinstance(value, want) or wrong_bool:
            raise _bad(name, value, f"a value of type {hint}")


def _check_ranges(cfg: EfficientConfig) -> None:
    if cfg.drafter not in DRAFTERS:
        raise _bad("drafter", cfg.drafter, f"one of {list(DRAFTERS)}")
    if not 1 <= cfg.max_draft_len <= 16:
        raise _bad("max_draft_len", cfg.max_draft_len, "an integer from 1 to 16")
    if cfg.gate not in GATE_MODES:
        raise _bad("gate", cfg.gate, f"one of {list(GATE_MODES)}")
    if not 0.0 <= cfg.gate_margin < 1.0:
        raise _bad("gate_margin", cfg.gate_margin, "a number in [0, 1)")
    if not 0.0 < cfg.sync_discount <= 1.0:
        raise _bad("sync_discount", cfg.sync_discount, "a number in (0, 1]")
    if cfg.seed < 0:
        raise _bad("seed", cfg.seed, "an integer >= 0")
    if cfg.draft_kv_window != 0 and not MIN_DRAFT_KV_WINDOW <= cfg.draft_kv_window <= MAX_DRAFT_KV_WINDOW:
        raise _bad("draft_kv_window", cfg.draft_kv_window,
                   f"0 (the whole context) or an integer from {MIN_DRAFT_KV_WINDOW} to {MAX_DRAFT_KV_WINDOW}")
    if cfg.draft_attention not in DRAFT_ATTENTIONS:
        raise _bad("draft_attention", cfg.draft_attention, f"one of {list(DRAFT_ATTENTIONS)}")
    if cfg.draft_attention == "triton" and cfg.draft_kv_window != 0:
        raise _bad("draft_attention", cfg.draft_attention,
                   f"'flashinfer' while draft_kv_window={cfg.draft_kv_window} (the window wraps FlashInfer's planner)")
    if cfg.calibration_path is not None and not os.path.isfile(cfg.calibration_path):
        raise _bad("calibration_path", cfg.calibration_path, "null or the path of an existing JSON file")


def parse_efficient_config(raw: Optional[Mapping[str, Any]]) -> EfficientConfig:
    """Build and validate an EfficientConfig from the ``custom.efficient`` mapping (or None)."""
    if raw is None:
        return EfficientConfig()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{CONFIG_PREFIX}={raw!r} is invalid: allowed is a mapping of its keys.")
    raw = dict(raw)
    unknown = sorted(set(raw) - set(EfficientConfig.field_names()))
    if unknown:
        raise ValueError(
            f"{_key(unknown[0])} is not a known key: allowed keys are {list(EfficientConfig.field_names())}."
        )
    _check_types(raw)
    if "gate_margin" in raw or "sync_discount" in raw:
        raw = {k: (float(v) if k in ("gate_margin", "sync_discount") else v) for k, v in raw.items()}
    cfg = EfficientConfig(**raw)
    _check_ranges(cfg)
    return cfg


def efficient_config_from_rollout(rollout_config: Any) -> EfficientConfig:
    """Read ``custom.efficient`` from a verl RolloutConfig (dataclass, DictConfig or dict)."""
    custom = _get(rollout_config, "custom")
    if custom is None:
        return parse_efficient_config(None)
    if not isinstance(custom, Mapping) and not hasattr(custom, "get"):
        raise ValueError(f"actor_rollout_ref.rollout.custom={custom!r} is invalid: allowed is a mapping.")
    efficient = custom.get("efficient")
    if efficient is not None and hasattr(efficient, "items") and not isinstance(efficient, dict):
        efficient = {k: v for k, v in efficient.items()}  # DictConfig → plain dict
    return parse_efficient_config(efficient)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def unsupported_mode_reason(rollout_config: Any, lora_as_adapter: bool) -> Optional[str]:
    """A sentence saying why this rollout setup cannot run on efficient_sglang, or None.

    Like SGLang's ``adaptive_unsupported_reason``: a reason, not a bool, so the error tells the user
    what to use instead.
    """
    pp = int(_get(rollout_config, "pipeline_model_parallel_size", 1) or 1)
    if pp > 1:
        return (
            f"efficient_sglang does not support pipeline parallelism "
            f"(actor_rollout_ref.rollout.pipeline_model_parallel_size={pp}); use "
            f"tensor_model_parallel_size for larger models, or rollout.name=sglang."
        )
    disagg = _get(rollout_config, "disaggregation")
    if disagg is not None and bool(_get(disagg, "enabled", False)):
        return (
            "efficient_sglang does not support prefill/decode disaggregation "
            "(actor_rollout_ref.rollout.disaggregation.enabled=True); use rollout.name=sglang for PD, "
            "or turn disaggregation off."
        )
    if lora_as_adapter:
        return (
            "efficient_sglang does not serve LoRA as a hot-swapped adapter (the drafter is requantized "
            "from merged weights); set actor_rollout_ref.model.lora.merge=True, or use rollout.name=sglang."
        )
    return None


def check_supported(rollout_config: Any, lora_as_adapter: bool) -> None:
    """Raise ValueError with the reason when the mode is unsupported."""
    reason = unsupported_mode_reason(rollout_config, lora_as_adapter)
    if reason is not None:
        raise ValueError(reason)


__all__ = [
    "CONFIG_PREFIX",
    "EfficientConfig",
    "check_supported",
    "config_from_json",
    "config_to_json",
    "efficient_config_from_rollout",
    "parse_efficient_config",
    "unsupported_mode_reason",
]


def config_to_json(cfg: EfficientConfig) -> str:
    """The config as one JSON line (how the server hands it to SGLang's scheduler processes)."""
    import json

    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def config_from_json(text: str) -> EfficientConfig:
    """Inverse of :func:`config_to_json`, validated like every other source of the config."""
    import json

    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ValueError(f"the efficient_sglang config handed to the engine is not JSON ({err}): {text[:200]!r}")
    return parse_efficient_config(raw)
