"""E(K) and the Beta posterior on the per-token acceptance α."""

import numpy as np
import pytest

from er_verl.control.acceptance import BetaPosterior, check_verify_result, expected_tokens


@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_expected_tokens_edges(k):
    assert expected_tokens(0.0, k) == 1.0
    assert expected_tokens(1.0, k) == k + 1
    assert expected_tokens(0.5, 0) == 1.0


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9, 0.999999])
def test_expected_tokens_closed_form(alpha):
    for k in range(1, 10):
        assert expected_tokens(alpha, k) == pytest.approx((1 - alpha ** (k + 1)) / (1 - alpha))


def test_expected_tokens_broadcasts_alpha_and_k():
    alphas = np.array([0.0, 0.5, 1.0])
    assert np.allclose(expected_tokens(alphas, 2), [1.0, 1.75, 3.0])
    grid = expected_tokens(alphas[:, None], np.array([[0, 1, 2]]))
    assert grid.shape == (3, 3) and np.allclose(grid[:, 2], [1.0, 1.75, 3.0])
    assert np.allclose(expected_tokens(alphas, np.array([2, 1, 0])), [1.0, 1.5, 1.0])


def test_expected_tokens_matches_monte_carlo():
    rng = np.random.default_rng(0)
    alpha, k = 0.7, 4
    ok = rng.random((200_000, k)) < alpha
    emitted = np.cumprod(ok, axis=1).sum(axis=1) + 1
    assert emitted.mean() == pytest.approx(expected_tokens(alpha, k), rel=0.01)


@pytest.mark.parametrize("alpha,k", [(-0.1, 2), (1.1, 2), (float("nan"), 2), (0.5, -1), (0.5, 1.5)])
def test_expected_tokens_rejects_bad_input(alpha, k):
    with pytest.raises(ValueError):
        expected_tokens(alpha, k)


def test_no_history_is_the_prior():
    post = BetaPosterior()
    assert post.mean == 0.5 and post.num_observations == 0
    assert BetaPosterior.from_mean(0.8, 10).mean == pytest.approx(0.8)


def test_one_sample_all_accepted_and_all_rejected():
    post = BetaPosterior()
    post.update(num_drafted=4, num_accepted=4)          # 4 successes, no rejection seen
    assert (post.successes, post.failures) == (4, 0)
    post = BetaPosterior()
    post.update(num_drafted=4, num_accepted=0)          # rejected at once: 1 failure
    assert (post.successes, post.failures) == (0, 1)
    post.update(num_drafted=4, num_accepted=2)
    assert (post.successes, post.failures) == (2, 2)


def test_zero_drafts_teach_nothing():
    post = BetaPosterior()
    post.update(0, 0)
    assert post.num_observations == 0


def test_posterior_concentrates_on_the_true_alpha():
    rng = np.random.default_rng(1)
    post, alpha = BetaPosterior(), 0.83
    for _ in range(3000):
        k = int(rng.integers(1, 8))
        a = int(np.cumprod(rng.random(k) < alpha).sum())
        post.update(k, a)
    assert post.mean == pytest.approx(alpha, abs=0.01)


def test_all_accepted_goes_to_one_all_rejected_to_zero():
    hi, lo = BetaPosterior(), BetaPosterior()
    for _ in range(500):
        hi.update(5, 5)
        lo.update(5, 0)
    assert hi.mean > 0.999 and lo.mean < 0.003


def test_discount_shrinks_evidence_toward_the_prior():
    post = BetaPosterior(prior_a=2, prior_b=2)
    for _ in range(10):
        post.update(3, 3)
    post.discount(0.5)
    assert post.successes == 15 and post.a == 17
    post.discount(1.0)
    assert post.successes == 15
    post.discount(0.0)
    assert post.mean == 0.5 and post.num_observations == 0


def test_sample_is_seeded_and_in_range():
    post = BetaPosterior(prior_a=3, prior_b=1)
    a = [post.sample(np.random.default_rng(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and 0.0 <= a[0] <= 1.0
    rng = np.random.default_rng(0)
    draws = np.array([post.sample(rng) for _ in range(20_000)])
    assert draws.mean() == pytest.approx(0.75, abs=0.01)


def test_from_mean_accepts_alpha_zero_and_one():
    assert BetaPosterior.from_mean(0.0, 4).mean < 0.01
    assert BetaPosterior.from_mean(1.0, 4).mean > 0.99


@pytest.mark.parametrize("drafted,accepted", [(-1, 0), (2, 3), (2, -1)])
def test_bad_verify_results_raise(drafted, accepted):
    with pytest.raises(ValueError, match="num_"):
        check_verify_result(drafted, accepted)
    with pytest.raises(ValueError):
        BetaPosterior().update(drafted, accepted)


@pytest.mark.parametrize("kwargs", [{"prior_a": 0}, {"prior_b": -1}, {"successes": -1}])
def test_bad_posterior_fields_raise(kwargs):
    with pytest.raises(ValueError):
        BetaPosterior(**kwargs)


@pytest.mark.parametrize("factor", [-0.1, 1.5])
def test_bad_discount_raises(factor):
    with pytest.raises(ValueError, match="factor"):
        BetaPosterior().discount(factor)
