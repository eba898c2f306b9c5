"""Expected accepted length and a Beta posterior for the per-token acceptance α.

Model (the paper's): each draft token is accepted independently with probability α until the
first rejection. A round that drafts K tokens emits the accepted tokens plus one more (the
recovered token at the first rejection, or the bonus token when all K are accepted), so

    E(K) = Σ_{i=0..K} α^i = (1 − α^(K+1)) / (1 − α),   E(K) = K + 1 at α = 1,   E(K) = 1 at α = 0.

Observing a chain of K drafts with a accepted gives a Bernoulli successes and, when a < K, one
failure (the rejection); draft tokens after the first rejection are never tested. The Beta posterior
over α is conjugate to that likelihood (it is a truncated geometric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BetaPosterior", "expected_tokens", "check_verify_result"]


def expected_tokens(alpha: float | np.ndarray, k: int | np.ndarray) -> float | np.ndarray:
    """E(K) = Σ_{i=0..K} α^i = (1 − α^(K+1)) / (1 − α): expected tokens one round emits.

    Summed term by term so α = 1 gives K + 1 exactly and α → 1 stays stable. `alpha` (values in
    [0, 1]) and `k` (draft lengths >= 0) may be scalars or arrays that broadcast together.
    """
    a = np.asarray(alpha, dtype=np.float64)
    ks = np.asarray(k)
    if np.any(ks < 0) or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError(f"k (the draft length) must be an integer >= 0, got {k}.")
    if np.any(np.isnan(a)) or np.any((a < 0.0) | (a > 1.0)):
        raise ValueError(f"alpha (per-token acceptance) must lie in [0, 1], got {alpha}.")
    term, total = np.ones_like(a), np.ones(np.broadcast(a, ks).shape)
    for i in range(1, int(ks.max(initial=0)) + 1):
        term = term * a
        total = total + np.where(i <= ks, term, 0.0)
    return float(total) if total.ndim == 0 else total


def check_verify_result(num_drafted: int, num_accepted: int) -> None:
    """Raise ValueError unless 0 <= num_accepted <= num_drafted."""
    if num_drafted < 0:
        raise ValueError(f"num_drafted must be >= 0, got {num_drafted}.")
    if not 0 <= num_accepted <= num_drafted:
        raise ValueError(
            f"num_accepted must lie in [0, num_drafted={num_drafted}], got {num_accepted}."
        )


@dataclass
class BetaPosterior:
    """Beta(a, b) over α with a = prior_a + successes, b = prior_b + failures.

    The prior pseudo-counts are kept apart from the evidence so `discount` shrinks only the
    evidence: after a weight sync the posterior moves back toward the prior, never below it.
    """

    prior_a: float = 1.0
    prior_b: float = 1.0
    successes: float = 0.0
    failures: float = 0.0

    def __post_init__(self) -> None:
        if not (self.prior_a > 0 and self.prior_b > 0):
            raise ValueError(
                f"prior_a and prior_b must be > 0, got {self.prior_a} and {self.prior_b}."
            )
        if self.successes < 0 or self.failures < 0:
            raise ValueError(
                f"successes and failures must be >= 0, got {self.successes}, {self.failures}."
            )

    @classmethod
    def from_mean(cls, mean: float, strength: float) -> BetaPosterior:
        """A prior with mean `mean` worth `strength` pseudo-observations: Beta(m·s, (1−m)·s).

        The mean is clipped into [1e-3, 1 − 1e-3] so both shape parameters stay positive.
        """
        if strength <= 0:
            raise ValueError(f"strength must be > 0 pseudo-observations, got {strength}.")
        if not 0.0 <= mean <= 1.0:
            raise ValueError(f"mean must lie in [0, 1], got {mean}.")
        m = min(max(mean, 1e-3), 1.0 - 1e-3)
        return cls(prior_a=m * strength, prior_b=(1.0 - m) * strength)

    @property
    def a(self) -> float:
        return self.prior_a + self.successes

    @property
    def b(self) -> float:
        return self.prior_b + self.failures

    @property
    def num_observations(self) -> float:
        """Discounted count of Bernoulli trials seen (accepted + rejected draft tokens)."""
        return self.successes + self.failures

    @property
    def mean(self) -> float:
        """E[α] = a / (a + b)."""
        return self.a / (self.a + self.b)

    @property
    def sd(self) -> float:
        """Standard deviation of α: sqrt(a·b / ((a + b)²·(a + b + 1)))."""
        a, b = self.a, self.b
        return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))

    def update(self, num_drafted: int, num_accepted: int) -> None:
        """Add one verify result: a successes, plus 1 failure if a < K (K = num_drafted)."""
        check_verify_result(num_drafted, num_accepted)
        self.successes += num_accepted
        self.failures += 1.0 if num_accepted < num_drafted else 0.0

    def discount(self, factor: float) -> None:
        """Multiply the evidence by `factor` in [0, 1] (1 keeps it, 0 resets to the prior)."""
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"factor (the discount) must lie in [0, 1], got {factor}.")
        self.successes *= factor
        self.failures *= factor

    def sample(self, rng: np.random.Generator) -> float:
        """One Thompson draw α ~ Beta(a, b) from the injected generator."""
        return float(rng.beta(self.a, self.b))
