"""Controller: gate + bandit + online cost model, as the engine uses it (pure, seeded)."""

import numpy as np
import pytest

from er_verl.config import EfficientConfig
from er_verl.control.controller import Controller
from er_verl.control.cost_model import CostModel, ModelShape, StepKind


def cost_8b():
    return CostModel.from_roofline(ModelShape(num_params=8e9))


def learned(controller, groups_alpha: dict, rounds: int, rng):
    """Feed verify results: each request of group g accepts a Geometric(α_g)-truncated prefix of K."""
    for _ in range(rounds):
        groups = [g for g in groups_alpha for _ in range(4)]
        k = controller.choose(groups) or controller.max_k
        accepted = []
        for g in groups:
            a = 0
            while a < k and rng.random() < groups_alpha[g]:
                a += 1
            accepted.append(a)
        controller.observe_round(groups, k, accepted)


def test_modes_and_empty_batches():
    assert Controller(4, cost_8b(), mode="never").choose(["a"]) == 0
    assert Controller(4, cost_8b()).choose([]) == 0
    assert 1 <= Controller(4, cost_8b(), mode="always").choose(["a"] * 512) <= 4  # speculates even at bs 512
    with pytest.raises(ValueError, match="mode 'sometimes'.*auto, always, never"):
        Controller(4, cost_8b(), mode="sometimes")


def test_gate_is_on_for_a_small_batch_of_predictable_groups_and_off_for_a_big_one():
    c = Controller(5, cost_8b(), bandit=False)
    learned(c, {"easy": 0.95}, rounds=50, rng=np.random.default_rng(0))
    assert c.choose(["easy"] * 2) >= 2
    assert c.choose(["easy"] * 4096) == 0
    assert c.decisions["on"] >= 1 and c.decisions["off"] >= 1


def test_unpredictable_groups_keep_speculation_off_even_when_small():
    c = Controller(5, cost_8b())
    learned(c, {"hard": 0.05}, rounds=50, rng=np.random.default_rng(1))
    assert c.choose(["hard"] * 2) == 0


def test_bandit_drafts_further_for_predictable_groups_and_is_seeded():
    picks = []
    for _ in range(2):
        c = Controller(8, cost_8b(), mode="always", seed=3)
        learned(c, {"easy": 0.95, "mid": 0.6}, rounds=80, rng=np.random.default_rng(2))
        picks.append(([c.choose(["easy"] * 2) for _ in range(20)], [c.choose(["mid"] * 2) for _ in range(20)]))
    assert picks[0] == picks[1]
    easy, mid = picks[0]
    assert np.median(easy) > np.median(mid)


def test_observed_step_times_refit_the_cost_model():
    c = Controller(4, cost_8b())
    before = c.cost.t_ar(8)
    for bs in (1, 2, 4, 8, 16, 32) * 20:
        c.observe_step(StepKind.TARGET, bs, 0.010 + 0.0001 * bs)
    assert c.cost.t_ar(8) == pytest.approx(0.0108, rel=0.05) and c.cost.t_ar(8) != pytest.approx(before)
    c.observe_step(StepKind.TARGET, 0, 0.01)  # ignored, not an error: an idle batch
    c.observe_step(StepKind.TARGET, 4, 0.0)


def test_weight_sync_discounts_what_the_bandit_learned():
    c = Controller(4, cost_8b())
    c.observe_round(["g"] * 8, 4, [4] * 8)
    n = c.bandit.posterior("g").num_observations
    c.on_weight_sync()
    assert c.bandit.posterior("g").num_observations == pytest.approx(n * 0.5, rel=0.3)


def test_from_config_uses_a_saved_calibration_when_given(tmp_path):
    cost = cost_8b()
    for _ in range(40):
        cost.observe(StepKind.TARGET, 1, 0.05)
    cost.fit()
    path = tmp_path / "cal.json"
    cost.save(path)
    c = Controller.from_config(EfficientConfig(calibration_path=str(path), max_draft_len=3), ModelShape(8e9))
    assert c.max_k == 3 and c.cost.t_ar(1) == pytest.approx(cost.t_ar(1))
    assert Controller.from_config(EfficientConfig(), ModelShape(8e9)).cost.t_ar(1) < 0.05
