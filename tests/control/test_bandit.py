"""The per-group Thompson bandit and the batch-K planners."""

import numpy as np
import pytest

from er_verl.control.acceptance import BetaPosterior, expected_tokens
from er_verl.control.bandit import (Arm, ThompsonBandit, arms_up_to, batch_tokens_per_second,
                                    choose_batch_k, choose_ragged_ks, round_cost)
from er_verl.control.cost_model import CostModel, ModelShape
from er_verl.control.gate import speedups

COST = CostModel.from_roofline(ModelShape(num_params=8e9))
ARMS = arms_up_to(8)


def _bandit(seed: int = 0, **kwargs) -> ThompsonBandit:
    return ThompsonBandit(ARMS, COST, np.random.default_rng(seed), **kwargs)


def _accepted(alpha: float, k: int, rng: np.random.Generator) -> int:
    """Truncated geometric: accepted draft tokens of one chain of k drafts."""
    return int(np.cumprod(rng.random(k) < alpha).sum())


def _rate(alpha: float, k: int, batch_size: int) -> float:
    return expected_tokens(alpha, k) / round_cost(Arm(k), batch_size, COST)


def test_arms_are_typed_and_validated():
    assert arms_up_to(3) == (Arm(1), Arm(2), Arm(3))
    assert arms_up_to(2, include_zero=True)[0] == Arm(k=0)
    assert sorted([Arm(3), Arm(1)]) == [Arm(1), Arm(3)]
    with pytest.raises(ValueError, match="Arm.k"):
        Arm(-1)
    with pytest.raises(ValueError, match="max_k"):
        arms_up_to(0)
    with pytest.raises(ValueError, match="arms"):
        ThompsonBandit([], COST, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        ThompsonBandit(ARMS, COST, rng=np.random.RandomState(0))


def test_thompson_is_within_5_percent_of_the_oracle_after_warm_up():
    """16 groups with α from 0.3 to 0.97, batch 1–32: each group's expected tokens/s after 50
    warm-up rounds against an oracle that knows α_g and takes argmax_K E(α_g, K)/c(K, B)."""
    env = np.random.default_rng(0)
    alphas = env.uniform(0.3, 0.97, size=16)
    bandit, got, best = _bandit(1), 0.0, 0.0
    for step in range(300):
        b = int(env.integers(1, 33))
        for g, alpha in enumerate(alphas):
            arm = bandit.choose(g, b)
            bandit.update(g, arm.k, _accepted(alpha, arm.k, env))
            if step >= 50:
                got += _rate(alpha, arm.k, b)
                best += max(_rate(alpha, a.k, b) for a in ARMS)
    assert got / best > 0.95


@pytest.mark.parametrize("per_request", [True, False])
def test_batch_plans_are_within_5_percent_of_the_oracle_after_warm_up(per_request):
    """Batches of 1–32 requests from 16 groups; throughput Σ E(α_i, K_i) / round_seconds(K)
    summed over rounds, against the same planner fed the true α."""
    env = np.random.default_rng(2)
    alphas = env.uniform(0.3, 0.97, size=16)
    bandit = _bandit(3)
    def shared(a, arms, cost):
        return [choose_batch_k(a, arms, cost)] * len(a)
    plan = choose_ragged_ks if per_request else shared
    tokens = seconds = oracle_tokens = oracle_seconds = 0.0
    for step in range(250):
        groups = env.integers(0, 16, size=int(env.integers(1, 33))).tolist()
        ks = [a.k for a in bandit.choose_batch(groups, per_request=per_request)]
        true = alphas[groups]
        for g, k in zip(groups, ks):
            bandit.update(g, k, _accepted(alphas[g], k, env))
        if step >= 50:
            oracle = [a.k for a in plan(true, ARMS, COST)]
            tokens += expected_tokens(true, np.array(ks)).sum()
            seconds += COST.round_seconds(ks)
            oracle_tokens += expected_tokens(true, np.array(oracle)).sum()
            oracle_seconds += COST.round_seconds(oracle)
    assert (tokens / seconds) / (oracle_tokens / oracle_seconds) > 0.95


def test_same_seed_same_choices():
    def run(seed):
        bandit, env, out = _bandit(seed), np.random.default_rng(9), []
        for _ in range(40):
            g = int(env.integers(0, 5))
            arm = bandit.choose(g, 4)
            bandit.update(g, arm.k, _accepted(0.7, arm.k, env))
            out.append(arm.k)
        return out + [a.k for a in bandit.choose_batch([0, 1, 2, 3, 4])]
    assert run(11) == run(11)
    assert run(11) != run(12)


def test_single_arm_is_always_chosen():
    bandit = ThompsonBandit([Arm(3)], COST, np.random.default_rng(0))
    assert {bandit.choose(g, b) for g in range(5) for b in [1, 64]} == {Arm(3)}
    assert choose_batch_k([0.1, 0.9], [Arm(3)], COST) == Arm(3)
    assert choose_ragged_ks([0.1, 0.9], [Arm(3)], COST) == [Arm(3), Arm(3)]


def test_no_history_uses_the_global_prior():
    bandit = _bandit(prior=BetaPosterior.from_mean(0.9, 20), group_prior_strength=4)
    post = bandit.posterior("new-uid")
    assert post.mean == pytest.approx(0.9) and post.num_observations == 0
    assert bandit.choose("another", 1) in ARMS


def test_all_accepted_drafts_far_all_rejected_drafts_little():
    bandit = _bandit()
    for _ in range(200):
        bandit.update("easy", 8, 8)
        bandit.update("hard", 8, 0)
    assert bandit.choose("easy", 1) == Arm(8)
    assert bandit.choose("hard", 1) == Arm(1)
    assert bandit.posterior("easy").mean > 0.99 and bandit.posterior("hard").mean < 0.02


def test_groups_learn_separately_and_new_groups_start_from_the_pooled_mean():
    bandit = _bandit(group_prior_strength=4)
    for _ in range(100):
        bandit.update("a", 4, 4)
        bandit.update("b", 4, 1)
    assert bandit.posterior("a").mean > 0.95 and bandit.posterior("b").mean < 0.6
    pooled = bandit.global_posterior.mean
    assert bandit.posterior("c").mean == pytest.approx(pooled, abs=1e-9)


def test_weight_sync_discounts_every_posterior():
    bandit = _bandit(sync_discount=0.5)
    for _ in range(10):
        bandit.update("a", 4, 4)
    before_group, before_global = bandit.posterior("a").successes, bandit.global_posterior.successes
    bandit.on_weight_sync()
    assert bandit.posterior("a").successes == before_group / 2
    assert bandit.global_posterior.successes == before_global / 2


def test_empty_and_zero_length_inputs():
    bandit = _bandit()
    assert bandit.choose_many([], 8) == [] and bandit.choose_batch([]) == []
    bandit.update("g", 0, 0)                                   # a K = 0 round teaches nothing
    assert bandit.posterior("g").num_observations == 0
    bandit.update_many([], [], [])
    with pytest.raises(ValueError, match="one entry per request"):
        bandit.update_many(["g"], [1, 2], [0])
    with pytest.raises(ValueError, match="num_accepted"):
        bandit.update("g", 2, 3)
    with pytest.raises(ValueError, match="alphas"):
        choose_batch_k([], ARMS, COST)


def test_lru_groups_are_bounded_and_forget_drops_one():
    bandit = _bandit(max_groups=3)
    for g in range(5):
        bandit.update(g, 2, 1)
    assert bandit.num_groups == 3
    bandit.forget(4)
    bandit.forget("unknown")
    assert bandit.num_groups == 2


def test_batch_k_for_equal_alphas_is_the_gate_best_k():
    for b, alpha in [(1, 0.9), (8, 0.7), (32, 0.5)]:
        best = int(np.argmax(speedups(alpha, b, 8, COST))) + 1
        assert choose_batch_k([alpha] * b, ARMS, COST) == Arm(best)


def test_ragged_plan_is_never_worse_than_one_shared_k():
    rng = np.random.default_rng(4)
    for _ in range(30):
        alphas = rng.uniform(0.0, 1.0, size=int(rng.integers(1, 40)))
        shared = choose_batch_k(alphas, ARMS, COST).k
        ragged = [a.k for a in choose_ragged_ks(alphas, ARMS, COST)]
        assert batch_tokens_per_second(alphas, ragged, COST) >= \
            batch_tokens_per_second(alphas, [shared] * alphas.size, COST) - 1e-12


def test_alpha_zero_and_one_extremes():
    assert choose_batch_k([0.0] * 4, ARMS, COST) == Arm(1)
    assert choose_batch_k([1.0], ARMS, COST) == Arm(8)
    assert choose_batch_k([0.0], arms_up_to(8, include_zero=True), COST) == Arm(0)


def test_optimistic_alphas_add_standard_deviations_that_shrink_with_evidence():
    bandit = ThompsonBandit(arms_up_to(4), CostModel.from_roofline(ModelShape(num_params=8e9)),
                            np.random.default_rng(0))
    new = bandit.optimistic_alphas(["new"], 1.0)[0]
    post = bandit.posterior("new")  # Beta(2, 2): mean 0.5, sd sqrt(4 / (16 * 5))
    assert post.sd == pytest.approx((4 / 80) ** 0.5) and new == pytest.approx(0.5 + (4 / 80) ** 0.5)
    for _ in range(200):
        bandit.update("old", 4, 2)
    old = bandit.optimistic_alphas(["old"], 1.0)[0]
    assert bandit.posterior("old").mean < old < bandit.posterior("old").mean + 0.05
    assert bandit.optimistic_alphas(["new", "old"], 0.0).tolist() == bandit.posterior_means(["new", "old"]).tolist()
    for _ in range(50):
        bandit.update("sure", 4, 4)
    assert bandit.optimistic_alphas(["sure"], 5.0)[0] == 1.0  # capped
    with pytest.raises(ValueError, match="optimism.*>= 0"):
        bandit.optimistic_alphas(["new"], -0.5)
