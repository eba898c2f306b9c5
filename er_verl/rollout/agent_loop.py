"""An agent loop that forwards the GRPO group id to the SGLang request.

verl's ``SingleTurnAgentLoop`` receives each sample's ``uid`` (the GRPO group: the n samples of one
prompt share it) and drops it. This subclass copies it into ``sampling_params["custom_params"]``,
which verl passes through unchanged and SGLang keeps per request (``Req.sampling_params.custom_params``),
where the engine's draft-length controller reads it. Select it with
``actor_rollout_ref.rollout.agent.default_agent_loop=efficient_single_turn_agent``.

Systems knob (off by default, for benchmarks on random-weight models, which never stop by themselves):
``ER_VERL_FORCE_RESPONSE_LEN="MEDIAN:SIGMA[:SEED]"`` gives each request ``max_tokens`` drawn from a
log-normal (median MEDIAN tokens, log-space spread SIGMA; capped at verl's response length) and
``ignore_eos``, so a rollout has a long tail of known lengths. The draw is a function of (the prompt's
``extra_info.index``, or its text; how often this process has seen that prompt; SEED), so two backends run
on the same data and seed get the same lengths. It warns in every process that uses it and records the
length in the sample's ``extra_fields`` (``er_forced_response_len``): no quality result can come from it.
"""

import hashlib
import logging
import math
import os
from collections import Counter
from typing import Any

import numpy as np
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

logger = logging.getLogger(__name__)

AGENT_LOOP_NAME = "efficient_single_turn_agent"
GROUP_KEY = "er_group"
FORCE_LEN_ENV = "ER_VERL_FORCE_RESPONSE_LEN"
FORCED_LEN_FIELD = "er_forced_response_len"
MIN_FORCED_LEN = 8


def parse_forced_len(text: str | None) -> tuple[float, float, int] | None:
    """``"MEDIAN:SIGMA[:SEED]"`` → (median, sigma, seed); None/empty → None (the knob is off)."""
    if not text or not text.strip():
        return None
    parts = text.strip().split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        median, sigma = float(parts[0]), float(parts[1])
        seed = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise ValueError(f"{FORCE_LEN_ENV}={text!r}: expected MEDIAN:SIGMA[:SEED], e.g. 300:1.0") from None
    if not (median >= 1 and math.isfinite(median)) or not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"{FORCE_LEN_ENV}={text!r}: MEDIAN must be >= 1 token and SIGMA >= 0")
    return median, sigma, seed


class ForcedLengths:
    """Per-request response lengths of the systems knob (see the module docstring)."""

    def __init__(self, median: float, sigma: float, seed: int = 0):
        self.median, self.sigma, self.seed = median, sigma, seed
        self.seen: Counter = Counter()

    def draw(self, prompt_key: str) -> int:
        occurrence = self.seen[prompt_key]
        self.seen[prompt_key] += 1
        key = int.from_bytes(hashlib.sha256(prompt_key.encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, key, occurrence])
        return max(MIN_FORCED_LEN, int(round(self.median * math.exp(self.sigma * rng.standard_normal()))))


def prompt_key(kwargs: dict) -> str:
    """The prompt's dataset index (``extra_info.index``) if it has one, else its text."""
    extra = kwargs.get("extra_info")
    if isinstance(extra, dict) and extra.get("index") is not None:
        return f"index:{extra['index']}"
    return f"prompt:{kwargs.get('raw_prompt')!r}"


_forced: ForcedLengths | None = None
_forced_spec: str | None = None


def forced_lengths() -> ForcedLengths | None:
    """This process's ForcedLengths from the environment (made once; warns when on)."""
    global _forced, _forced_spec
    spec = os.environ.get(FORCE_LEN_ENV)
    if spec != _forced_spec:
        parsed = parse_forced_len(spec)
        _forced_spec, _forced = spec, (ForcedLengths(*parsed) if parsed else None)
        if _forced is not None:
            logger.warning("er_verl: %s=%s: response lengths are FORCED (ignore_eos, drawn max_tokens); "
                           "systems measurements only", FORCE_LEN_ENV, spec)
    return _forced


def with_forced_length(sampling_params: dict[str, Any], length: int) -> dict[str, Any]:
    """A copy of ``sampling_params`` that generates exactly ``length`` tokens (unless verl caps it lower)."""
    return {**sampling_params, "max_tokens": int(length), "ignore_eos": True}


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
        params = with_group(sampling_params, kwargs.get("uid"))
        forced = forced_lengths()
        length = forced.draw(prompt_key(kwargs)) if forced is not None else None
        if length is not None:
            length = min(length, int(self.response_length))  # verl caps only its own default max_tokens
            params = with_forced_length(params, length)
        output = await super().run(params, priority=priority, **kwargs)
        if length is not None:
            output.extra_fields[FORCED_LEN_FIELD] = length
        return output
