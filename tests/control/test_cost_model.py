"""The roofline step-time model: prior, online least-squares calibration, save/load."""

import numpy as np
import pytest

from er_verl.control.cost_model import (CostModel, Hardware, ModelShape, StepKind, StepParams,
                                        fit_step_params, roofline_prior)

SHAPE = ModelShape(num_params=8e9)
TRUE = {   # a "GPU" that differs from the prior by 10–60 % in every parameter
    StepKind.TARGET: StepParams(5.0e-3, 8e-5, 0.0, 3.0e-5, 120.0),
    StepKind.DRAFT: StepParams(1.6e-3, 4e-5, 0.0, 2.5e-5, 60.0),
    StepKind.VERIFY: StepParams(5.5e-3, 6e-5, 2e-5, 3.0e-5, 140.0),
}


def _observe(model: CostModel, num: int, noise: float, seed: int = 0, max_batch: int = 256) -> None:
    rng = np.random.default_rng(seed)
    for i in range(num):
        kind = list(StepKind)[i % 3]
        b = int(rng.integers(1, max_batch + 1))
        k = int(rng.integers(1, 9)) if kind is StepKind.VERIFY else 0
        n = b * (k + 1) if kind is StepKind.VERIFY else b
        model.observe(kind, b, TRUE[kind].predict(b, n) * rng.lognormal(0.0, noise), k)


def test_prior_is_the_roofline():
    hw = Hardware()
    prior = roofline_prior(SHAPE, hw)
    mem = 8e9 * 2 / hw.bandwidth_bytes_per_s
    flops_per_token = 2 * 8e9 / hw.flops_per_s
    for b in [1, 16, 128, 1024]:   # max(bytes/BW, flops/F) + c0 + c1·B
        roof = max(mem, flops_per_token * b) + SHAPE.overhead_s + SHAPE.per_seq_s * b
        assert prior[StepKind.TARGET].predict(b, b) == pytest.approx(roof)
    assert prior[StepKind.TARGET].knee_tokens == pytest.approx(mem / flops_per_token)
    ratio = prior[StepKind.DRAFT].knee_tokens / prior[StepKind.TARGET].knee_tokens
    assert ratio == pytest.approx(SHAPE.draft_bytes_ratio)


def test_no_samples_means_the_prior():
    model = CostModel.from_roofline(SHAPE)
    for kind in StepKind:
        assert model.params(kind) == model.prior[kind]
    assert model.t_verify(8, 0) == pytest.approx(model.prior[StepKind.VERIFY].predict(8, 8))


def test_one_sample_moves_the_model_a_little_toward_it():
    model = CostModel.from_roofline(SHAPE)
    before = model.t_ar(8)
    model.observe("target", 8, 2 * before)
    after = model.t_ar(8)
    assert before < after < 2 * before
    assert model.num_samples(StepKind.TARGET) == 1


def test_calibration_recovers_known_parameters_from_noisy_timings():
    """3 % log-normal noise, 600 samples per kind, B in 1..256, K in 1..8: fixed, per-request
    cost and knee within 10 %, compute slope within 15 % (worst over 20 seeds: 4 % and 9 %),
    predicted step times within 2 %."""
    model = CostModel.from_roofline(SHAPE)
    _observe(model, 1800, noise=0.03)
    tolerance = {"fixed_s": 0.10, "per_seq_s": 0.10, "knee_tokens": 0.10,
                 "compute_per_token_s": 0.15}
    for kind, truth in TRUE.items():
        got = model.params(kind)
        for name, rel in tolerance.items():
            assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=rel), (kind, name)
        b = np.arange(1, 257)
        n = b * 5 if kind is StepKind.VERIFY else b
        assert np.allclose(got.predict(b, n), truth.predict(b, n), rtol=0.02)
    assert model.params(StepKind.VERIFY).per_token_s == pytest.approx(2e-5, rel=0.25)


def test_batches_below_the_knee_leave_the_compute_slope_at_the_prior():
    model = CostModel.from_roofline(SHAPE)
    _observe(model, 300, noise=0.02, max_batch=16)
    target = model.params(StepKind.TARGET)
    prior = model.prior[StepKind.TARGET]
    assert target.compute_per_token_s == pytest.approx(prior.compute_per_token_s, rel=0.2)
    assert target.fixed_s == pytest.approx(TRUE[StepKind.TARGET].fixed_s, rel=0.05)


def test_fit_without_noise_is_exact():
    truth = TRUE[StepKind.TARGET]
    b = np.arange(1, 300, 3)
    fit = fit_step_params(b, b, truth.predict(b, b), roofline_prior(SHAPE)[StepKind.TARGET],
                          fit_per_token=False)
    assert np.allclose(fit.predict(b, b), truth.predict(b, b), rtol=2e-3)


def test_grouped_batched_solve_matches_per_sample_least_squares():
    """The fit groups samples with equal (b, n) and solves all knees as one batch of normal equations; at each
    knee its θ and loss equal a per-sample lstsq of the same ridge objective (repeated batch sizes, noise)."""
    from er_verl.control.cost_model import _groups, _solve

    rng = np.random.default_rng(3)
    prior = roofline_prior(SHAPE)[StepKind.VERIFY]
    b = rng.integers(1, 40, 600).astype(float)
    n = b * rng.integers(1, 6, 600)
    t = TRUE[StepKind.VERIFY].predict(b, n) * (1 + 0.05 * rng.standard_normal(600))
    free, w = np.array([True, True, True, True]), 1e-3
    knees = np.array([30.0, 90.0, 400.0])
    thetas, losses = _solve(_groups(b, n, t, t), knees, prior, free, w)
    theta0 = prior.linear()
    scale = np.maximum(np.abs(theta0), 0.01 * prior.fixed_s / np.array([1.0, 64.0, 64.0, 64.0]))
    for knee, theta, loss in zip(knees, thetas, losses):
        x = np.stack([np.ones_like(b), b, n, np.maximum(0.0, n - knee)], axis=1) / t[:, None]
        lhs = np.vstack([x, np.sqrt(w) * np.diag(1.0 / scale)])
        rhs = np.concatenate([np.ones_like(t), np.sqrt(w) * theta0 / scale])
        ref, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
        ref_loss = np.sum((lhs @ ref - rhs) ** 2) + w * (np.log(knee / prior.knee_tokens) / np.log(4.0)) ** 2
        assert np.allclose(theta, ref, rtol=1e-6, atol=1e-12)
        assert loss == pytest.approx(ref_loss, rel=1e-6)


def test_round_seconds_plain_uniform_and_ragged():
    model = CostModel.from_roofline(SHAPE)
    assert model.round_seconds([0, 0, 0]) == model.t_ar(3)
    uniform = model.round_seconds([2] * 4)
    assert uniform == pytest.approx(2 * model.t_draft(4) + model.t_verify(4, 2))
    ragged = model.round_seconds([1, 3])       # draft steps at batch 2, 1, 1; verify 6 tokens
    verify = model.params(StepKind.VERIFY).predict(2, 6)
    assert ragged == pytest.approx(model.t_draft(2) + 2 * model.t_draft(1) + verify)


def test_save_and_load_round_trip(tmp_path):
    model = CostModel.from_roofline(SHAPE)
    _observe(model, 300, noise=0.02)
    model.save(tmp_path / "calibration.json")
    loaded = CostModel.load(tmp_path / "calibration.json")
    for kind in StepKind:   # the saved calibration becomes the prior, exactly
        assert loaded.params(kind) == loaded.prior[kind] == model.params(kind)
    assert loaded.t_ar(17) == pytest.approx(model.t_ar(17))


def test_refit_happens_every_refit_every_samples():
    model = CostModel.from_roofline(SHAPE, refit_every=50)
    _observe(model, 300, noise=0.02)
    first = model.params(StepKind.DRAFT)
    model.observe("draft", 4, 1.0)                       # one outlier: not refitted yet
    assert model.params(StepKind.DRAFT) == first
    model.fit("draft")
    assert model.params(StepKind.DRAFT) != first


@pytest.mark.parametrize("args", [("target", 0, 0.01), ("target", 4, 0.0), ("verify", 4, 0.01, -1)])
def test_bad_observations_raise(args):
    with pytest.raises(ValueError):
        CostModel.from_roofline(SHAPE).observe(*args)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        CostModel.from_roofline(SHAPE).observe("prefill", 4, 0.01)
    with pytest.raises(ValueError, match="num_params"):
        roofline_prior(ModelShape(num_params=0))
    with pytest.raises(ValueError, match="ks"):
        CostModel.from_roofline(SHAPE).round_seconds([])
    with pytest.raises(ValueError, match="format"):
        CostModel.from_dict({"format": "other"})
    with pytest.raises(ValueError, match="prior"):
        CostModel({StepKind.TARGET: TRUE[StepKind.TARGET]})


def test_unmeasured_kinds_borrow_the_measured_target_scale():
    """A small model whose target steps measure 10x the roofline (launch-bound): before any draft or
    verify sample, those kinds are scaled by the same factor, so speculation does not look free."""
    model = CostModel.from_roofline(ModelShape(num_params=0.5e9))
    prior_ratio = model.t_draft(64) / model.t_ar(64)
    for b in (8, 64, 128) * 40:
        model.observe("target", b, 10 * model.prior[StepKind.TARGET].predict(b, b))
    assert model.target_scale() == pytest.approx(10.0, rel=0.05)
    assert model.t_draft(64) / model.t_ar(64) == pytest.approx(prior_ratio, rel=0.05)
    assert model.t_verify(64, 2) == pytest.approx(10 * model.prior[StepKind.VERIFY].predict(64, 192), rel=0.05)
    model.observe("draft", 64, 1e-3)  # once a kind has its own samples, it stops borrowing
    assert model.t_draft(64) == pytest.approx(1e-3, rel=0.5)


def test_a_bucket_corrects_its_predictions_once_it_holds_enough_samples():
    """The local correction: bucket [64, 128) measured at half the fit's prediction; below MIN_LOCAL samples
    the prediction is the fit's; at MIN_LOCAL it follows the measurements; other buckets keep the fit.
    Evicted samples leave their bucket's count."""
    from er_verl.control.cost_model import MIN_LOCAL, bucket_of

    assert [bucket_of(b) for b in (1, 2, 3, 4, 127, 128)] == [0, 1, 1, 2, 6, 7]
    cost = CostModel.from_roofline(ModelShape(num_params=8e9), window=8 * MIN_LOCAL)
    fit_8 = cost.t_ar(8)
    prior = CostModel.from_roofline(ModelShape(num_params=8e9))
    true = lambda b: 0.5 * prior.t_ar(b)  # noqa: E731 - the GPU's real plain step: half the prior's
    for _ in range(3 * MIN_LOCAL):
        cost.observe(StepKind.TARGET, 400, 4 * true(400))  # slow steps at bs 400 (eager, above the graphs)
    for i in range(MIN_LOCAL):
        assert cost.t_ar(100) == pytest.approx(cost.params(StepKind.TARGET).predict(100, 100))  # the fit alone
        cost.observe(StepKind.TARGET, 90 + i, true(90 + i))
    assert cost.bucket_samples(StepKind.TARGET, 100) == MIN_LOCAL
    assert cost.params(StepKind.TARGET).predict(100, 100) > 1.1 * true(100)  # the global fit is still off
    assert cost.t_ar(100) == pytest.approx(true(100), rel=0.08)  # its own bucket corrects it (ratio at bs 90-97)
    assert cost.t_ar(8) == pytest.approx(cost.params(StepKind.TARGET).predict(8, 8))  # no samples at bs 8-15
    for _ in range(8 * MIN_LOCAL):  # the window is full of bs-8 samples now
        cost.observe(StepKind.TARGET, 8, fit_8)
    assert cost.bucket_samples(StepKind.TARGET, 100) == 0 and cost.bucket_samples(StepKind.TARGET, 8) == 8 * MIN_LOCAL
    assert cost.t_ar(100) == pytest.approx(cost.params(StepKind.TARGET).predict(100, 100))


def test_a_buckets_correction_follows_its_newest_samples_between_refits():
    """Issue 5, run 9: rounds measured at short warm-up contexts, then long contexts at the same batch sizes
    cost 2-3x more; the correction must follow within a few samples, not wait for the next refit."""
    from er_verl.control.cost_model import LOCAL_RECENT, MIN_LOCAL

    cost = CostModel.from_roofline(ModelShape(num_params=8e9))
    fit = cost.params(StepKind.TARGET).predict(100, 100)
    for _ in range(32):
        cost.observe(StepKind.TARGET, 100, fit)
    old = cost.t_ar(100)  # refits once here (32 pending)
    assert old == pytest.approx(fit, rel=0.05)
    fitted = cost.params(StepKind.TARGET).predict(100, 100)
    for i in range(LOCAL_RECENT // 2 + 1):
        if i == LOCAL_RECENT // 2 - 1:
            assert cost.t_ar(100) == pytest.approx(old, rel=0.05)  # 7 of 16 new: the median is still old
        cost.observe(StepKind.TARGET, 100, 3 * fit)
    assert cost.params(StepKind.TARGET).predict(100, 100) == fitted  # no refit ran in between
    assert cost.t_ar(100) == pytest.approx(3 * fit, rel=0.05)
    assert MIN_LOCAL <= LOCAL_RECENT
