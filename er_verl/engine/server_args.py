"""The SGLang ServerArgs (as plain kwargs) and environment that turn on er_verl's self-drafter.

No sglang import: the efficient_sglang server merges these into the args dict verl turns into
``ServerArgs`` (and the environment its SGLang processes inherit), and the tests check them on the CPU.

What each setting does, and why (sglang-0.5.14-seams.md):

* ``speculative_algorithm="STANDALONE"`` with **no** ``speculative_draft_model_path``: the draft is
  built from the target's config; without a draft path SGLang does not scale the per-token KV cost by
  ``1 + L_draft/L_target`` (``pool_configurator.py``), and the drafter shares the target's KV pool
  anyway, so token capacity equals plain SGLang's (§a4).
* ``speculative_draft_model_quantization``: ``awq_marlin`` (int4 drafter) or ``fp8``; er_verl's draft
  loader reads it to choose the drafter kind (no quantized checkpoint exists or is read).
* ``speculative_num_steps=Kmax``, ``speculative_eagle_topk=1``, ``speculative_num_draft_tokens=Kmax+1``:
  SGLang sizes KV over-allocation per decode step from these at launch (``max_speculative_num_draft_tokens``
  is cached), so starting at Kmax needs no patch for any K ≤ Kmax later.
* ``enable_draft_weights_cpu_backup=False``: the drafter's buffers are requantized after a resume,
  never restored from a CPU copy (pitfall 3).
* ``attention_backend="flashinfer"``: the backend the verify and shared-KV draft path are built on.
  ``EfficientConfig.draft_attention="triton"`` sets ``speculative_draft_attention_backend`` so that only the
  draft runner uses SGLang's triton decode attention (its split is planned on the GPU: ``sync_free``).
* ``max_running_requests``: SGLang resets it to 48 for STANDALONE when unset; pass the rollout's own.

Environment (:func:`self_draft_env`): a 2 GiB FlashInfer workspace (the stock size overflowed when
verify graphs were captured for large batches, measurements.md; pitfall 5) and the overlap plan stream
off (FlashInfer lacks ``update_verify_buffers_to_fill_after_draft``, pitfall 19). Caveat, read in
``flashinfer_backend.py:345-355``: SGLang *sets* the workspace size to 512 MB whenever the architecture
is Qwen2/Qwen3 (overriding this variable), so for those models the variable has no effect; each extra
runtime state (K) allocates one more workspace of that size outside the KV profile.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from er_verl.config import EfficientConfig, config_to_json

DRAFT_QUANTIZATION = {"int4": "awq_marlin", "fp8": "fp8"}
SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
FLASHINFER_WORKSPACE_BYTES = 2 << 30


def model_architecture(model_path: str) -> Optional[str]:
    """``architectures[0]`` from a local ``config.json``, or None (hub ids are checked at load time)."""
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        archs = json.load(f).get("architectures") or [None]
    return archs[0]


def check_self_draft_model(model_path: str) -> None:
    """Raise ValueError unless the model is a dense architecture the self-drafter supports.

    MoE and MTP-capable models are built by SGLang as an MTP head when loaded as a draft (pitfall 17).
    """
    arch = model_architecture(model_path)
    if arch is not None and arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"the self-drafter does not support {arch} ({model_path}): supported are "
            f"{list(SUPPORTED_ARCHITECTURES)}; set actor_rollout_ref.rollout.custom.efficient.speculate=False "
            "to decode plainly."
        )


def linear_shards(config: dict, tp_size: int = 1) -> dict[str, tuple[int, int]]:
    """[N_out, K_in] of each Linear of one decoder layer as SGLang shards it over ``tp_size`` ranks
    (qkv and gate_up merged, column-parallel; o and down row-parallel)."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads", heads)
    inter = config["intermediate_size"]
    return {
        "qkv_proj": ((heads + 2 * kv_heads) * head_dim // tp_size, hidden),
        "o_proj": (hidden, heads * head_dim // tp_size),
        "gate_up_proj": (2 * inter // tp_size, hidden),
        "down_proj": (hidden, inter // tp_size),
    }


def check_int4_shapes(model_path: str, tp_size: int = 1) -> None:
    """Raise ValueError, at launch, when a Linear shard of the model cannot run as AWQ-Marlin int4.

    Without this, SGLang would fall back to plain AWQ for such a layer silently (seams §b1), and the
    in-place requant would refuse the layer later, in the middle of a rollout.
    """
    from er_verl.draft.quantize import check_marlin_shape

    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        return  # a hub id: SGLang reads the config; the drafter's requant names the layer if it fails
    with open(path) as f:
        config = json.load(f)
    if not all(key in config for key in ("hidden_size", "num_attention_heads", "intermediate_size")):
        return  # not a dense decoder config this check understands; SGLang validates it at load
    for name, (n, k) in linear_shards(config, tp_size).items():
        try:
            check_marlin_shape(n, k, 128)
        except ValueError as err:
            raise ValueError(
                f"the int4 drafter cannot quantize {name} of {model_path} at tensor_model_parallel_size="
                f"{tp_size} ([N_out, K_in] = [{n}, {k}]: {err}); set actor_rollout_ref.rollout.custom."
                "efficient.drafter=fp8, or speculate=False to decode plainly."
            ) from None


def self_draft_server_args(
    cfg: EfficientConfig, model_path: str, max_running_requests: Optional[int] = None, tp_size: int = 1
) -> dict[str, Any]:
    """Extra ServerArgs kwargs that turn on the self-drafter for ``model_path`` (module docstring)."""
    check_self_draft_model(model_path)
    if cfg.drafter == "int4":
        check_int4_shapes(model_path, tp_size)
    args: dict[str, Any] = {
        "speculative_algorithm": "STANDALONE",
        "speculative_draft_model_path": None,
        "speculative_draft_model_quantization": DRAFT_QUANTIZATION[cfg.drafter],
        "speculative_num_steps": cfg.max_draft_len,
        "speculative_eagle_topk": 1,
        "speculative_num_draft_tokens": cfg.max_draft_len + 1,
        "enable_draft_weights_cpu_backup": False,
        "attention_backend": "flashinfer",
    }
    if cfg.draft_attention != "flashinfer":
        args["speculative_draft_attention_backend"] = cfg.draft_attention
    if max_running_requests is not None:
        args["max_running_requests"] = max_running_requests
    return args


def self_draft_env(forced_k: Optional[int] = None, cfg: Optional[EfficientConfig] = None) -> dict[str, str]:
    """Environment for the SGLang processes of a self-draft server (set before they start).

    ``forced_k``: the draft length of every decode batch (``ER_VERL_SPEC_K``, read by the worker;
    0..Kmax; unset = 0). ``cfg``: the config the worker's controller is built from (``ER_VERL_CONTROL``);
    the controller then chooses K per batch, unless ``forced_k`` > 0 overrides it.
    """
    env = {
        "ER_VERL_SELF_DRAFT": "1",  # engine/plugin.py: register the self-drafter's hooks
        "SGLANG_FLASHINFER_WORKSPACE_SIZE": str(FLASHINFER_WORKSPACE_BYTES),
        "SGLANG_ENABLE_OVERLAP_PLAN_STREAM": "0",
    }
    if forced_k is not None:
        env["ER_VERL_SPEC_K"] = str(forced_k)
    if cfg is not None:
        env["ER_VERL_CONTROL"] = config_to_json(cfg)
    return env


# Decode CUDA-graph sizes of a self-draft server. SGLang captures the target's Kmax+1-token verify graphs for
# every size of its decode list, and FlashInfer's workspace (pinned to 512 MB for Qwen2/Qwen3) overflowed at
# bs 256 with K=5 (1536 tokens, H200) while bs 128 (768 tokens) captured: the drafter and verify graphs stay
# within SPEC_GRAPH_TOKENS. The K=0 steps are plain decodes and get their own graphs (ER_VERL_PLAIN_GRAPH_MAX_BS)
# up to K0_GRAPH_MAX_BS unless the user sets cuda_graph_max_bs_decode. That is past plain SGLang's own default
# (256 for an H100/H200-class GPU at tp < 4, server_args.py): above it both decode eagerly, and an eager 8B step
# at bs 256-400 is bound by the host's kernel launches (H200, 2026-11-26: 15.5-25 ms of host time to enqueue the
# eager forward, about the step's GPU span; results/issue5_k0_large_bs_h200.json), so graphs there pay.
SPEC_GRAPH_TOKENS = 768
K0_GRAPH_MAX_BS = 512
USER_GRAPH_KEYS = ("cuda_graph_max_bs_decode", "cuda_graph_bs_decode", "cuda_graph_config")


def spec_graph_bs_cap(kmax: int) -> int:
    """Largest decode batch whose (Kmax+1)-token verify graph stays within SPEC_GRAPH_TOKENS (128 at Kmax 5)."""
    return max(1, SPEC_GRAPH_TOKENS // (kmax + 1))


def graph_sizes(kmax: int, max_running_requests: Optional[int], user: dict) -> tuple[dict[str, Any], dict[str, str]]:
    """(ServerArgs kwargs, environment) for a self-draft server's decode graphs, given the user's
    ``engine_kwargs.sglang``. The drafter / verify graphs reach bs ⌊SPEC_GRAPH_TOKENS/(Kmax+1)⌋ (128 at Kmax 5);
    K=0 graphs reach the user's ``cuda_graph_max_bs_decode``, else K0_GRAPH_MAX_BS, never past
    ``max_running_requests``. A user's explicit list (``cuda_graph_bs_decode``) or ``cuda_graph_config`` is
    left as it is: nothing is returned."""
    if any(user.get(key) is not None for key in USER_GRAPH_KEYS[1:]):
        return {}, {}
    plain = user.get("cuda_graph_max_bs_decode") or K0_GRAPH_MAX_BS
    if isinstance(plain, bool) or not isinstance(plain, int) or plain < 1:
        raise ValueError(f"engine_kwargs.sglang.cuda_graph_max_bs_decode={plain!r}: expected a batch size >= 1")
    if max_running_requests:
        plain = min(plain, int(max_running_requests))
    spec = min(plain, spec_graph_bs_cap(kmax))
    return {"cuda_graph_max_bs_decode": spec}, {"ER_VERL_PLAIN_GRAPH_MAX_BS": str(plain)}
