"""Per-group draft-length bandit: Thompson sampling on a Beta posterior of each group's α.

A group g is the n samples of one GRPO prompt (verl's uid); its samples share a per-token
acceptance α_g. Every verify result updates Beta(a_g, b_g) (accepted draft tokens are successes,
a rejection is a failure; see `acceptance.BetaPosterior`). To choose, draw α̃_g ~ Beta(a_g, b_g)
and take the arm with the most expected tokens per second at the current batch size B:

    K_g = argmax_K E(α̃_g, K)·B / c(K, B),
    c(K, B) = K·t_draft(B) + t_verify(B, K),   c(0, B) = t_ar(B).

All arms share one posterior (the arms differ only in K), so every observation informs every arm.
A new group starts from the global posterior's mean, worth `group_prior_strength` pseudo-counts;
the global posterior pools every observation. At each weight sync the policy moves, so all the
evidence (groups and global) is multiplied by `sync_discount`.

Choosing K_g per group independently ignores that a ragged round pays for max_i K_i draft steps:
one optimistic group lengthens every request's round. For a whole batch use `choose_batch`, which
draws α̃ per group and plans jointly: `choose_batch_k` (one shared K, maximising
Σ_i E(α_i, K) / c(K, B)) or `choose_ragged_ks` (per-request K_i, never worse than the shared K).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from er_verl.control.acceptance import BetaPosterior, check_verify_result, expected_tokens
from er_verl.control.cost_model import CostModel, StepKind

__all__ = ["Arm", "arms_up_to", "round_cost", "choose_batch_k", "choose_ragged_ks",
           "batch_tokens_per_second", "ThompsonBandit"]


@dataclass(frozen=True, order=True)
class Arm:
    """One draft length; k = 0 is a plain decode step."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"Arm.k (the draft length) must be >= 0, got {self.k}.")


def arms_up_to(max_k: int, *, include_zero: bool = False) -> tuple[Arm, ...]:
    """(Arm(1), ..., Arm(max_k)), with Arm(0) first when include_zero."""
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}.")
    return tuple(Arm(k) for k in range(0 if include_zero else 1, max_k + 1))


def round_cost(arm: Arm, batch_size: int, cost: CostModel) -> float:
    """c(K, B) = K·t_draft(B) + t_verify(B, K) seconds, and t_ar(B) for K = 0."""
    if arm.k == 0:
        return cost.t_ar(batch_size)
    return arm.k * cost.t_draft(batch_size) + cost.t_verify(batch_size, arm.k)


def _rates(alphas: np.ndarray, arms: Sequence[Arm], batch_size: int, cost: CostModel) -> np.ndarray:
    """[len(alphas), len(arms)] expected tokens per second per request: E(α_i, K) / c(K, B)."""
    costs = np.array([round_cost(a, batch_size, cost) for a in arms])
    ks = np.array([a.k for a in arms])
    return expected_tokens(alphas[:, None], ks[None, :]) / costs


def _check_arms(arms: Sequence[Arm]) -> tuple[Arm, ...]:
    arms = tuple(arms)
    if not arms or not all(isinstance(a, Arm) for a in arms):
        raise ValueError(f"arms must be a non-empty sequence of Arm, got {arms!r}.")
    return arms


def choose_batch_k(alphas: Sequence[float] | np.ndarray, arms: Sequence[Arm], cost: CostModel,
                   batch_size: int | None = None) -> Arm:
    """One K for the whole batch: argmax_K Σ_i E(α_i, K) / c(K, B); B defaults to len(alphas)."""
    arms = _check_arms(arms)
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas.size == 0:
        raise ValueError("alphas must hold one acceptance per request, got an empty list.")
    b = alphas.size if batch_size is None else batch_size
    if b < 1:
        raise ValueError(f"batch_size must be >= 1, got {b}.")
    return arms[int(np.argmax(_rates(alphas, arms, b, cost).sum(axis=0)))]


def batch_tokens_per_second(alphas: Sequence[float] | np.ndarray, ks: Sequence[int],
                            cost: CostModel) -> float:
    """Σ_i E(α_i, K_i) / round_seconds(K): expected tokens per second of one (ragged) round."""
    alphas, ks = np.asarray(alphas, dtype=np.float64).ravel(), np.asarray(ks, dtype=np.int64)
    if alphas.size != ks.size or ks.size == 0:
        raise ValueError(f"alphas and ks must be non-empty and of equal length, got "
                         f"{alphas.size} and {ks.size}.")
    return float(np.sum(expected_tokens(alphas, ks))) / cost.round_seconds(ks)


def _plan_for_max(alphas: np.ndarray, ks: np.ndarray, top: int, lam: float,
                  cost: CostModel) -> np.ndarray:
    """K_i = argmax_{k <= top} E(α_i, k) − λ·k·(δ_draft + δ_verify), δ the marginal seconds."""
    b = alphas.size
    draft, verify = cost.params(StepKind.DRAFT), cost.params(StepKind.VERIFY)
    d_draft = draft.predict(b, b) - draft.predict(b - 1, b - 1)
    n = b * (top + 1)
    d_verify = verify.predict(b, n) - verify.predict(b, n - 1)
    allowed = ks[ks <= top]
    gain = expected_tokens(alphas[:, None], allowed[None, :])                  # [B, arms <= top]
    return allowed[np.argmax(gain - lam * allowed * (d_draft + d_verify), axis=1)]


def choose_ragged_ks(alphas: Sequence[float] | np.ndarray, arms: Sequence[Arm],
                     cost: CostModel) -> list[Arm]:
    """Per-request K_i for one ragged round, maximising Σ_i E(α_i, K_i) / round_seconds(K).

    One Dinkelbach step from the shared-K plan: with λ its tokens per second, for each candidate
    longest draft M every request takes
    K_i = argmax_{k <= M} E(α_i, k) − λ·k·(δ_draft + δ_verify)
    (δ: seconds one more request adds to a draft step, one more token to the verify pass); the
    exact ratio then picks among these plans and the shared-K one, so it is never worse than it.
    """
    arms = _check_arms(arms)
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    shared = choose_batch_k(alphas, arms, cost)
    best = np.full(alphas.size, shared.k)
    best_rate = batch_tokens_per_second(alphas, best, cost)
    ks = np.array(sorted({a.k for a in arms}))
    for top in ks[ks > 0]:
        plan = _plan_for_max(alphas, ks, int(top), best_rate, cost)
        rate = batch_tokens_per_second(alphas, plan, cost)
        if rate > best_rate:
            best, best_rate = plan, rate
    return [Arm(int(k)) for k in best]


class ThompsonBandit:
    """Thompson sampling over typed arms, one Beta posterior per group, injected RNG."""

    def __init__(self, arms: Sequence[Arm], cost: CostModel, rng: np.random.Generator, *,
                 prior: BetaPosterior | None = None, group_prior_strength: float = 4.0,
                 sync_discount: float = 0.5, max_groups: int = 65536) -> None:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}.")
        if group_prior_strength <= 0 or not 0 <= sync_discount <= 1 or max_groups < 1:
            raise ValueError(
                f"need group_prior_strength > 0, sync_discount in [0, 1] and max_groups >= 1, got "
                f"{group_prior_strength}, {sync_discount}, {max_groups}.")
        self.arms, self.cost, self.rng = _check_arms(arms), cost, rng
        self.global_posterior = prior if prior is not None else BetaPosterior()
        self.group_prior_strength, self.sync_discount = group_prior_strength, sync_discount
        self.max_groups = max_groups
        self._groups: OrderedDict[Hashable, BetaPosterior] = OrderedDict()

    @property
    def num_groups(self) -> int:
        return len(self._groups)

    def posterior(self, group: Hashable) -> BetaPosterior:
        """The group's posterior, created from the global mean on first sight."""
        post = self._groups.get(group)
        if post is None:
            post = BetaPosterior.from_mean(self.global_posterior.mean, self.group_prior_strength)
            self._groups[group] = post
            if len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)   # forget the least recently used group
        else:
            self._groups.move_to_end(group)
        return post

    def _per_entry(self, groups: Sequence[Hashable], values) -> np.ndarray:
        """Evaluate `values(posteriors)` once per distinct group and spread it over the entries."""
        unique = list(dict.fromkeys(groups))
        by_group = dict(zip(unique, values([self.posterior(g) for g in unique]) if unique else []))
        return np.array([by_group[g] for g in groups], dtype=np.float64)

    def sample_alphas(self, groups: Sequence[Hashable]) -> np.ndarray:
        """One Thompson draw α̃ per entry of `groups` (one draw per distinct group, shared)."""
        return self._per_entry(
            groups, lambda ps: self.rng.beta([p.a for p in ps], [p.b for p in ps]))

    def posterior_means(self, groups: Sequence[Hashable]) -> np.ndarray:
        """E[α_g] per entry of `groups` (what the gate is given)."""
        return self._per_entry(groups, lambda ps: [p.mean for p in ps])

    def optimistic_alphas(self, groups: Sequence[Hashable], optimism: float) -> np.ndarray:
        """min(1, E[α_g] + optimism·sd[α_g]) per entry of `groups`: an upper confidence bound, what the gate
        is given so that a group it knows little about is tried where speculation would pay if the bound
        held (a new group's prior, worth `group_prior_strength` pseudo-counts, has sd ~0.2); its first
        verify results then shrink the bound toward the mean."""
        if optimism < 0:
            raise ValueError(f"optimism (posterior standard deviations added to the mean) must be >= 0, "
                             f"got {optimism}.")
        return self._per_entry(groups, lambda ps: [min(1.0, p.mean + optimism * p.sd) for p in ps])

    def choose_many(self, groups: Sequence[Hashable], batch_size: int) -> list[Arm]:
        """Independent K_g per entry of `groups`, each as if the whole batch used it."""
        if not groups:
            return []
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        rates = _rates(self.sample_alphas(groups), self.arms, batch_size, self.cost)
        return [self.arms[i] for i in np.argmax(rates, axis=1)]

    def choose(self, group: Hashable, batch_size: int) -> Arm:
        return self.choose_many([group], batch_size)[0]

    def choose_batch(self, groups: Sequence[Hashable], *, per_request: bool = True) -> list[Arm]:
        """Plan the whole running batch (one entry per request) from one Thompson draw per group:
        `choose_ragged_ks` when per_request, else the shared `choose_batch_k`."""
        if not groups:
            return []
        alphas = self.sample_alphas(groups)
        if per_request:
            return choose_ragged_ks(alphas, self.arms, self.cost)
        return [choose_batch_k(alphas, self.arms, self.cost)] * len(groups)

    def update(self, group: Hashable, num_drafted: int, num_accepted: int) -> None:
        """Add one chain's verify result to the group's and the global posterior."""
        check_verify_result(num_drafted, num_accepted)
        self.posterior(group).update(num_drafted, num_accepted)
        self.global_posterior.update(num_drafted, num_accepted)

    def update_many(self, groups: Sequence[Hashable], num_drafted: Sequence[int],
                    num_accepted: Sequence[int]) -> None:
        """`update` for each (group, K_i, a_i) triple of one verify pass."""
        if not len(groups) == len(num_drafted) == len(num_accepted):
            raise ValueError(f"groups, num_drafted and num_accepted must have one entry per "
                             f"request, got lengths {len(groups)}, {len(num_drafted)}, "
                             f"{len(num_accepted)}.")
        for g, k, a in zip(groups, num_drafted, num_accepted):
            self.update(g, int(k), int(a))

    def on_weight_sync(self) -> None:
        """The policy moved: multiply every posterior's evidence by `sync_discount`."""
        self.global_posterior.discount(self.sync_discount)
        for post in self._groups.values():
            post.discount(self.sync_discount)

    def forget(self, group: Hashable) -> None:
        """Drop a finished group (no error if unknown)."""
        self._groups.pop(group, None)
