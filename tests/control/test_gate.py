"""The gate: speculate iff max_K S(K, B) > 1 + margin, re-decided every batch."""

import numpy as np
import pytest

from er_verl.control.acceptance import expected_tokens
from er_verl.control.cost_model import CostModel, ModelShape
from er_verl.control.gate import Gate, speedups

COST = CostModel.from_roofline(ModelShape(num_params=8e9))


def _alpha_for_speedup(target: float, batch_size: int) -> float:
    """The α at which max_K S(K, B) equals `target` (S grows with α)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if speedups(mid, batch_size, 8, COST).max() < target else (lo, mid)
    return (lo + hi) / 2


def test_speedup_formula():
    b, k, alpha = 4, 3, 0.8
    s = speedups(alpha, b, 5, COST)[k - 1]
    expect = expected_tokens(alpha, k) * COST.t_ar(b) / (k * COST.t_draft(b) + COST.t_verify(b, k))
    assert s == pytest.approx(expect)


def test_on_for_small_batches_off_for_large_in_both_directions():
    gate = Gate(COST, max_k=8)
    decisions = [gate.decide(b, 0.85) for b in [256, 2, 256, 2, 128, 1]]
    assert [d.speculate for d in decisions] == [False, True, False, True, False, True]
    on = decisions[1]
    assert 1 <= on.k <= 8 and on.speedup == on.best_speedup > 1.05
    assert decisions[0].k == 0 and decisions[0].speedup == 1.0 and decisions[0].best_speedup < 1


def test_acceptance_drop_turns_it_off_mid_rollout():
    gate = Gate(COST)
    assert gate.decide(4, 0.9).speculate
    assert not gate.decide(4, 0.05).speculate
    assert gate.decide(4, 0.9).speculate


def test_alpha_zero_never_and_alpha_one_always_at_batch_one():
    gate = Gate(COST, max_k=6)
    assert not gate.decide(1, 0.0).speculate                # E(K) = 1: a round can only cost more
    d = gate.decide(1, 1.0)
    assert d.speculate and d.k == 6                          # every token accepted: draft the most


def test_threshold_without_hysteresis_is_exactly_one_plus_margin():
    gate = Gate(COST, margin=0.05, hysteresis=0.0)
    for b in [1, 8, 32, 64]:
        for alpha in np.linspace(0, 1, 11):
            d = gate.decide(b, alpha)
            assert d.speculate == (speedups(alpha, b, 8, COST).max() > 1.05)


def test_hysteresis_band_keeps_the_current_state():
    gate = Gate(COST, margin=0.05, hysteresis=0.03)          # on above 1.05, off below 1.02
    in_band = _alpha_for_speedup(1.035, 8)
    assert not gate.decide(8, in_band).speculate               # off stays off
    assert gate.decide(8, _alpha_for_speedup(1.06, 8)).speculate
    assert gate.decide(8, in_band).speculate                   # on stays on
    assert not gate.decide(8, _alpha_for_speedup(1.01, 8)).speculate
    gate.decide(8, 0.99)
    gate.reset()
    assert not gate.is_on


def test_per_request_alphas_average_expected_tokens():
    alphas = [0.2, 0.95, 0.6]
    s = speedups(alphas, 3, 4, COST)
    k = np.arange(1, 5)
    mean_e = np.mean([expected_tokens(a, k) for a in alphas], axis=0)
    single = speedups(0.6, 3, 4, COST) / expected_tokens(0.6, k)
    assert np.allclose(s, mean_e * single)


def test_empty_batch_is_off_and_empty_alpha_raises():
    gate = Gate(COST)
    assert gate.decide(0, []).speculate is False
    with pytest.raises(ValueError, match="alpha"):
        gate.decide(4, [])


@pytest.mark.parametrize("kwargs", [{"max_k": 0}, {"margin": -0.1}, {"hysteresis": 0.5},
                                    {"hysteresis": -0.01}])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        Gate(COST, **kwargs)


def test_bad_alpha_or_batch_raises():
    with pytest.raises(ValueError, match="alpha"):
        Gate(COST).decide(4, 1.5)
    with pytest.raises(ValueError, match="batch_size"):
        speedups(0.5, -1, 4, COST)
