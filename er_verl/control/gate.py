"""The gate: speculate or not, for this batch, from the cost model and the acceptance estimate.

For a batch of B requests with per-request acceptance α_i all drafting K tokens,

    S(K, B) = mean_i E(α_i, K) · t_ar(B) / (K · t_draft(B) + t_verify(B, K)),

the predicted speedup over plain decode (E from `acceptance.expected_tokens`, the times from
`cost_model.CostModel`). The gate turns speculation on when max_{1<=K<=Kmax} S(K, B) > 1 + margin
and, once on, keeps it on while max S >= 1 + margin − hysteresis. It is re-evaluated every batch,
so it switches both ways during a rollout (off while the batch is large, on in the tail, off again
if acceptance drops); the hysteresis band only stops flapping around the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from er_verl.control.acceptance import expected_tokens
from er_verl.control.cost_model import CostModel

__all__ = ["GateDecision", "Gate", "speedups"]


@dataclass(frozen=True)
class GateDecision:
    speculate: bool   # draft this batch
    k: int            # the K with the best predicted speedup (0 when speculate is False)
    speedup: float    # predicted S(k, B) of that K (1.0 when speculate is False)
    best_speedup: float  # max_K S(K, B), reported even when the gate is off


def _as_alphas(alpha: float | Sequence[float] | np.ndarray) -> np.ndarray:
    alphas = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    if alphas.size == 0:
        raise ValueError("alpha must be a number or a non-empty list of per-request acceptances.")
    return alphas


def speedups(alpha: float | Sequence[float] | np.ndarray, batch_size: int, max_k: int,
             cost: CostModel) -> np.ndarray:
    """[S(1, B) .. S(Kmax, B)], S(K, B) = mean_i E(α_i, K)·t_ar(B) / (K·t_draft + t_verify)."""
    if batch_size < 1 or max_k < 1:
        raise ValueError(f"batch_size and max_k must be >= 1, got {batch_size} and {max_k}.")
    alphas = _as_alphas(alpha)
    ks = np.arange(1, max_k + 1)
    tokens = expected_tokens(alphas[:, None], ks[None, :]).mean(axis=0)          # [Kmax]
    rounds = np.array([k * cost.t_draft(batch_size) + cost.t_verify(batch_size, k) for k in ks])
    return tokens * cost.t_ar(batch_size) / rounds


class Gate:
    """Per-batch on/off decision with a hysteresis band; holds only its last state."""

    def __init__(self, cost: CostModel, *, max_k: int = 8, margin: float = 0.05,
                 hysteresis: float = 0.03) -> None:
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}.")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}.")
        if not 0 <= hysteresis <= margin:
            raise ValueError(f"hysteresis must lie in [0, margin={margin}], got {hysteresis}.")
        self.cost, self.max_k, self.margin, self.hysteresis = cost, max_k, margin, hysteresis
        self.is_on = False

    def threshold(self) -> float:
        """1 + margin while off; 1 + margin − hysteresis while on."""
        return 1.0 + self.margin - (self.hysteresis if self.is_on else 0.0)

    def decide(self, batch_size: int, alpha: float | Sequence[float] | np.ndarray) -> GateDecision:
        """Decide for one batch; `alpha` is one estimate or one per running request.

        An empty batch (batch_size 0) never speculates and does not change the state.
        """
        if batch_size == 0:
            return GateDecision(False, 0, 1.0, 1.0)
        s = speedups(alpha, batch_size, self.max_k, self.cost)
        best_k = int(np.argmax(s)) + 1
        best = float(s[best_k - 1])
        self.is_on = best > self.threshold() if not self.is_on else best >= self.threshold()
        if not self.is_on:
            return GateDecision(False, 0, 1.0, best)
        return GateDecision(True, best_k, best, best)

    def reset(self) -> None:
        """Back to off (e.g. at the start of a rollout)."""
        self.is_on = False
