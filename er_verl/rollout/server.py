"""The efficient_sglang server and replica: verl's SGLang classes with er_verl's seams.

- launch: refuses unsupported modes with a sentence, validates ``custom.efficient``, loads SGLang's
  plugins before verl builds ``ServerArgs`` (so ServerArgs-time hooks apply), keeps ``meta_info``;
  with ``speculate=True`` merges the self-drafter's ServerArgs (``engine/server_args.py``) into verl's
  ``engine_kwargs.sglang`` and sets its environment (inherited by SGLang's schedulers), so the engine
  worker runs with the controller choosing K per decode batch;
- generate: guarantees a group key in ``custom_params["er_group"]`` (the GRPO uid from
  ``efficient_single_turn_agent``; otherwise a hash of the prompt, which the n samples of a
  single-turn GRPO group share) and maps spec metrics to verl's names;
- after_weight_sync: runs on the server after every verl weight sync (the adapter calls it).
"""

import hashlib
import logging
import os
from typing import Any, Optional

import ray
import torch
from verl.workers.rollout.replica import TokenOutput
from verl.workers.rollout.sglang_rollout.async_sglang_server import SGLangHttpServer, SGLangReplica

from er_verl.config import check_supported, efficient_config_from_rollout
from er_verl.rollout.agent_loop import AGENT_LOOP_NAME, GROUP_KEY
from er_verl.rollout.metrics import spec_extra_fields

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)


def prompt_group_key(prompt_ids: Any) -> str:
    """Fallback group key: a hash of the prompt token ids (shared by a single-turn GRPO group)."""
    ids = prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else list(prompt_ids)
    return "prompt:" + hashlib.blake2b(repr(ids).encode(), digest_size=8).hexdigest()


class EfficientSGLangHttpServer(SGLangHttpServer):
    """verl's SGLangHttpServer with er_verl's launch checks, group keys, metrics and sync hook."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_supported(self.config, self.lora_as_adapter)
        self._init_efficient_state()

    def _init_efficient_state(self) -> None:
        self.efficient = efficient_config_from_rollout(self.config)
        self.speculating = False  # set at launch when the self-drafter is switched on
        self.num_weight_syncs = 0
        self._meta_by_rid: dict[str, dict] = {}
        self._warned_no_uid = False
        self._groups_since_sync: dict[str, int] = {}  # group key → requests, for the sync log line

    async def launch_server(self, master_address: Optional[str] = None, master_port: Optional[int] = None):
        from er_verl.engine.plugin import enable_in_this_process

        # This actor's own environment (inherited by its SGLang schedulers), before verl builds ServerArgs.
        if self.efficient.speculate:
            self._enable_self_draft()
        enable_in_this_process()
        print(f"er_verl[server]: launching efficient_sglang with {self.efficient}", flush=True)
        await super().launch_server(master_address=master_address, master_port=master_port)
        if self.node_rank == 0:
            self._keep_meta_info()

    def _enable_self_draft(self) -> None:
        """Put the self-drafter's ServerArgs into a copy of ``engine_kwargs.sglang`` (verl pops from it)
        and its environment into this actor's, which SGLang's scheduler processes inherit."""
        from er_verl.engine.server_args import graph_sizes, self_draft_env, self_draft_server_args

        args = self_draft_server_args(self.efficient, self.model_config.local_path,
                                      max_running_requests=self.config.get("max_num_seqs", None),
                                      tp_size=int(self.config.tensor_model_parallel_size))
        if self.config.get("engine_kwargs", None) is None:
            self.config.engine_kwargs = {}
        engine_kwargs = self.config.engine_kwargs
        user = dict(engine_kwargs.get("sglang", None) or {})
        clash = {k: user[k] for k in args if k in user and user[k] != args[k]}
        graph_args, graph_env = graph_sizes(self.efficient.max_draft_len, self.config.get("max_num_seqs", None), user)
        if clash:
            raise ValueError(
                f"actor_rollout_ref.rollout.engine_kwargs.sglang sets {clash}, which the self-drafter sets to "
                f"{ {k: args[k] for k in clash} }; remove those keys, or set "
                "actor_rollout_ref.rollout.custom.efficient.speculate=False to decode plainly."
            )
        engine_kwargs["sglang"] = {**user, **args, **graph_args}
        os.environ.update({**self_draft_env(None, self.efficient), **graph_env})
        self.speculating = True

    def _keep_meta_info(self) -> None:
        """Wrap the tokenizer manager so ``meta_info`` survives verl's generate (which drops it)."""
        manager, original = self.tokenizer_manager, self.tokenizer_manager.generate_request
        kept = self._meta_by_rid

        def generate_request(obj, request=None):
            async def stream():
                async for out in original(obj, request):
                    kept[obj.rid] = out.get("meta_info", {})
                    yield out

            return stream()

        manager.generate_request = generate_request

    def _with_group_key(self, prompt_ids: Any, sampling_params: dict[str, Any]) -> dict[str, Any]:
        custom = dict(sampling_params.get("custom_params") or {})
        if GROUP_KEY not in custom:
            if not self._warned_no_uid:
                logger.warning(
                    "er_verl: requests carry no GRPO uid; grouping by prompt hash. Set "
                    "actor_rollout_ref.rollout.agent.default_agent_loop=%s to forward uids.",
                    AGENT_LOOP_NAME,
                )
                self._warned_no_uid = True
            custom[GROUP_KEY] = prompt_group_key(prompt_ids)
        return {**sampling_params, "custom_params": custom}

    async def generate(
        self,
        prompt_ids: torch.Tensor,
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **kwargs,
    ) -> TokenOutput:
        sampling_params = self._with_group_key(prompt_ids, sampling_params)
        output = await super().generate(
            prompt_ids, sampling_params, request_id, image_data=image_data, video_data=video_data, **kwargs
        )
        meta = self._meta_by_rid.pop(request_id, None)
        output.extra_fields.update(spec_extra_fields(meta, self.speculating))
        group = sampling_params["custom_params"][GROUP_KEY]
        output.extra_fields[GROUP_KEY] = group
        self._groups_since_sync[group] = self._groups_since_sync.get(group, 0) + 1
        return output

    async def after_weight_sync(self, global_steps: Optional[int] = None) -> int:
        """Runs once per verl weight sync, after the weights reached SGLang. Returns the sync count."""
        self.num_weight_syncs += 1
        groups, self._groups_since_sync = self._groups_since_sync, {}
        sample = list(groups.items())[:3]
        print(
            f"er_verl[server]: weight sync {self.num_weight_syncs} (global_steps={global_steps}); since the last "
            f"sync {sum(groups.values())} requests in {len(groups)} groups, e.g. {sample}",
            flush=True,
        )
        return self.num_weight_syncs


class EfficientSGLangReplica(SGLangReplica):
    """verl's SGLangReplica whose server actors are EfficientSGLangHttpServer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(EfficientSGLangHttpServer)
