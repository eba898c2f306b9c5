"""EfficientServerAdapter: verl's SGLang ServerAdapter plus a server-side hook after each weight sync.

The adapter lives in every trainer worker (hybrid mode) or checkpoint-engine worker; its
``update_weights`` is the one place every verl weight-sync path goes through. After the bf16 weights
reached SGLang (only the target receives them), the server's TP leader is told, once per sync.
"""

from verl.workers.rollout.sglang_rollout.sglang_rollout import ServerAdapter
from verl.workers.rollout.sglang_rollout.utils import lora_served_as_adapter

from er_verl.config import check_supported, efficient_config_from_rollout


class EfficientServerAdapter(ServerAdapter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_supported(self.config, lora_served_as_adapter(self.model_config))
        self.efficient = efficient_config_from_rollout(self.config)

    async def update_weights(self, weights, global_steps: int = None, wire_format: str = "named_tensors", **kwargs):
        await super().update_weights(weights, global_steps=global_steps, wire_format=wire_format, **kwargs)
        if self._engine is not None and self._is_server_tp_leader():
            await self.server_actor.after_weight_sync.remote(global_steps)
