"""An agent loop that forwards the GRPO group id to the SGLang request.

verl's ``SingleTurnAgentLoop`` receives each sample's ``uid`` (the GRPO group: the n samples of one
prompt share it) and drops it. This subclass copies it into ``sampling_params["custom_params"]``,
which verl passes through unchanged and SGLang keeps per request (``Req.sampling_params.custom_params``),
where the engine's draft-length controller reads it. Select it with
``actor_rollout_ref.rollout.agent.default_agent_loop=efficient_single_turn_agent``.
"""

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

AGENT_LOOP_NAME = "efficient_single_turn_agent"
GROUP_KEY = "er_group"


def with_group(sampling_params: dict[str, Any], uid: Any) -> dict[str, Any]:
    """A copy of ``sampling_params`` whose ``custom_params`` carry the group id (None: unchanged copy).

    verl shares one sampling_params dict between all samples of a batch, so it is never mutated.
    """
    params = dict(sampling_params)
    if uid is None:
        return params
    custom = dict(params.get("custom_params") or {})
    custom[GROUP_KEY] = str(uid)
    params["custom_params"] = custom
    return params


@register(AGENT_LOOP_NAME)
class EfficientSingleTurnAgentLoop(SingleTurnAgentLoop):
    """SingleTurnAgentLoop that tags each request with its GRPO group (``uid``)."""

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        return await super().run(with_group(sampling_params, kwargs.get("uid")), priority=priority, **kwargs)
