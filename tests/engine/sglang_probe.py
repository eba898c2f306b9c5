"""Probes run in a fresh interpreter by test_self_draft_sglang.py: they load the real installed SGLang
(plugins, ServerArgs, model classes, the weight updater) on the CPU and print one JSON line.

    python tests/engine/sglang_probe.py plugin   # ER_VERL_ENGINE=1: hooks, classes, ServerArgs, routing
    python tests/engine/sglang_probe.py build    # a tiny Qwen2 (tied) and Qwen3 (untied) self-drafter on meta
"""

import json
import os
import sys
import tempfile

import torch
from torch import nn

SPEC = "sglang.srt.speculative.standalone_worker_v2"


def tiny_config_dir(model_type: str, tied: bool) -> str:
    from transformers import AutoConfig

    arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[model_type]
    extra = {"head_dim": 64} if model_type == "qwen3" else {}
    cfg = AutoConfig.for_model(
        model_type, vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=512, tie_word_embeddings=tied, torch_dtype="bfloat16",
        architectures=[arch], **extra,
    )
    path = tempfile.mkdtemp()
    cfg.save_pretrained(path)
    return path


def server_args_for(path: str, max_draft_len: int = 3, drafter: str = "int4"):
    from sglang.srt.server_args import ServerArgs

    from er_verl.config import EfficientConfig
    from er_verl.engine.server_args import self_draft_server_args

    cfg = EfficientConfig(max_draft_len=max_draft_len, drafter=drafter)
    kwargs = self_draft_server_args(cfg, path, max_running_requests=64)
    return ServerArgs(model_path=path, skip_tokenizer_init=True, device="cuda", **kwargs)


# ---------------------------------------------------------------- plugin probe


class _Ok:
    success = True


def _routing(out: dict) -> None:
    """Drive SGLang's real SchedulerWeightUpdaterManager through all five paths with fakes."""
    import torch.distributed as dist
    from sglang.srt.managers.scheduler_components.weight_updater import SchedulerWeightUpdaterManager as U

    from er_verl.engine.drafter import SelfDrafter
    from er_verl.engine.self_spec import SelfSpecMixin
    from er_verl.engine.sharing import SharingPlan
    from er_verl.engine.weight_sync import EVENTS

    calls = []

    class Target:  # the target TpModelWorker
        model_runner = type("R", (), {"model": nn.Module()})()

        def __getattr__(self, name):
            if name.startswith("update_weights_from_"):
                return lambda req: calls.append(("target", name)) or (True, "ok")
            raise AttributeError(name)

    class Draft(SelfSpecMixin):  # our worker's routing, on a fake draft side
        def __init__(self):
            self.target_worker = Target()
            self._draft_worker = type("D", (), {"drafter": SelfDrafter(nn.Module(), "int4", SharingPlan())})()

    draft = Draft()
    draft.drafter.is_dirty, draft.drafter.pending_sources = False, []
    EVENTS.subscribe(draft.drafter.mark_dirty)
    dist.barrier = lambda group=None: None
    adapter = type("A", (), {"pause": lambda self, tag: None, "resume": lambda self, tag: None})()
    mgr = U(tp_worker=draft.target_worker, draft_worker=draft, tp_cpu_group=None, memory_saver_adapter=adapter,
            flush_cache=lambda **k: True, is_fully_idle=lambda: True)
    req = type("Req", (), {"disable_draft_model": False, "flush_cache": False, "model_path": "x", "load_format": None,
                           "recapture_cuda_graph": False, "tags": ["kv_cache"]})()
    mgr.offload_tags = {"kv_cache"}
    for method in ("update_weights_from_tensor", "update_weights_from_ipc", "update_weights_from_distributed",
                   "update_weights_from_disk", "resume_memory_occupation"):
        result = getattr(mgr, method)(req)
        out.setdefault("success", []).append(bool(getattr(result, "success", True)))
    out["target_calls"] = calls
    out["dirty"], out["pending"] = draft.drafter.is_dirty, draft.drafter.pending_sources


def plugin_probe() -> dict:
    import sglang.srt.plugins as plugins
    import sglang.srt.speculative.standalone_worker_v2 as sw2
    from sglang.srt.model_loader import loader as sg_loader
    from sglang.srt.model_executor.model_runner_kv_cache_mixin import ModelRunnerKVCacheMixin
    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    plugins.load_plugins()
    from er_verl.engine import plugin, worker
    from er_verl.engine.self_spec import SelfSpecMixin

    sa = server_args_for(tiny_config_dir("qwen2", tied=True), max_draft_len=5)
    out = {
        "targets": plugin.hook_targets(),
        "unpatched": [t for t in plugin.hook_targets() if t not in HookRegistry._patched],
        "worker_replaced": sw2.StandaloneWorkerV2 is worker.SelfSpecWorkerV2,
        "draft_worker_replaced": sw2.StandaloneDraftWorker is worker.SelfDraftWorker,
        "create_worker": SpeculativeAlgorithm.from_string("STANDALONE").create_worker(sa).__name__,
        "loader_hooked": getattr(sg_loader.get_model_loader, "__wrapped__", None) is not None,
        "pools_hooked": getattr(ModelRunnerKVCacheMixin._init_pools, "__wrapped__", None) is not None,
        "routing_from_mixin": all(
            getattr(worker.SelfSpecWorkerV2, m) is getattr(SelfSpecMixin, m)
            for m in ("update_weights_from_tensor", "update_weights_from_disk", "update_weights_from_ipc",
                      "forward_batch_generation")
        ),
        "server_args": {k: getattr(sa, k) for k in (
            "speculative_algorithm", "speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens",
            "speculative_draft_model_path", "speculative_draft_model_quantization", "speculative_adaptive",
            "max_running_requests", "enable_draft_weights_cpu_backup", "load_format", "max_speculative_num_draft_tokens")},
    }
    _routing(out)
    return out


# ---------------------------------------------------------------- build probe


def _init_cpu_sglang(sa) -> None:
    """Just enough of SGLang's process state to construct model classes on the CPU."""
    import sglang.srt.layers.quantization.marlin_utils as marlin_utils
    import sglang.srt.layers.rotary_embedding.base as rope_base
    from sglang.srt.distributed.parallel_state import init_distributed_environment, initialize_model_parallel
    from sglang.srt.layers.dp_attention import initialize_dp_attention
    from sglang.srt.server_args import set_global_server_args_for_scheduler

    init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                 distributed_init_method=f"tcp://127.0.0.1:{29500 + os.getpid() % 1000}")
    initialize_model_parallel(1)
    set_global_server_args_for_scheduler(sa)
    initialize_dp_attention(sa, sa.get_model_config())
    rope_base._is_cpu = True  # the CUDA rope path imports a JIT kernel at construction
    marlin_utils.get_device_capability = lambda *a, **k: (9, 0)  # AWQ-Marlin checks the GPU generation


def _tensors(model: nn.Module) -> dict:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))  # rotary cos_sin_cache is non-persistent
    return named


def _build_one(model_type: str, tied: bool, drafter: str = "int4") -> dict:
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader.loader import _initialize_model
    from sglang.srt.model_loader.utils import get_model_architecture, set_default_torch_dtype

    from er_verl.engine import loader

    sa = server_args_for(tiny_config_dir(model_type, tied), drafter=drafter)
    if model_type == "qwen2":
        _init_cpu_sglang(sa)
    target_config = ModelConfig.from_server_args(sa)
    get_model_architecture(target_config)  # imports SGLang's model registry (not under meta: it makes tensors)
    with set_default_torch_dtype(torch.bfloat16), torch.device("meta"):
        target = _initialize_model(target_config, LoadConfig(), None)
    before = {n: id(t) for n, t in _tensors(target).items()}
    draft_config = ModelConfig.from_server_args(sa, is_draft_model=True)
    drafter = loader.build_self_drafter(target, draft_config, LoadConfig(), loader.draft_kind(draft_config.quantization))
    target_ids = {id(x) for x in _tensors(target).values()}
    named = _tensors(drafter.model)
    d, t = drafter.model, target
    return {
        "quantization": draft_config.quantization,
        "kind": drafter.kind,
        "owned": sorted(n for n, x in named.items() if id(x) not in target_ids),
        "shared_modules": drafter.plan.modules,
        "links": sorted(f"{type(l.draft).__name__}.{l.name}" for l in drafter.plan.links),
        "lm_head_is_target_lm_head": d.lm_head is t.lm_head,
        "lm_head_is_embed": d.lm_head is d.model.embed_tokens,
        "rotary_shared": d.model.layers[1].self_attn.rotary_emb is t.model.layers[1].self_attn.rotary_emb,
        "norm_shared": d.model.layers[0].input_layernorm is t.model.layers[0].input_layernorm,
        # Qwen3's LayerCommunicator runs the norms it captured at construction (H200 failure, 2026-11-25)
        "communicator_norms_shared": [
            getattr(getattr(layer, "layer_communicator", None), attr, tl.input_layernorm if attr == "input_layernorm"
                    else tl.post_attention_layernorm) is getattr(tl, attr)
            for layer, tl in zip(d.model.layers, t.model.layers)
            for attr in ("input_layernorm", "post_attention_layernorm")
        ],
        "target_untouched": before == {n: id(x) for n, x in _tensors(target).items()},
        "quantized_layers": [n for n, m in d.named_modules() if loader.is_quantized(m)],
    }


def build_probe() -> dict:
    return {
        "qwen2_tied": _build_one("qwen2", tied=True),
        "qwen3_untied": _build_one("qwen3", tied=False),
        "qwen3_fp8": _build_one("qwen3", tied=False, drafter="fp8"),
        "llama_untied": _build_one("llama", tied=False),
    }


if __name__ == "__main__":
    result = {"plugin": plugin_probe, "build": build_probe}[sys.argv[1]]()
    print("RESULT" + json.dumps(result, default=str), flush=True)
