"""The reference rejection sampler emits exactly the target's filtered distribution p."""

import numpy as np
import pytest
import torch
from scipy import stats

from er_verl.control import rejection
from er_verl.control.rejection import (SamplingParams, filter_probs, rejection_sample,
                                       rejection_sample_batch)

NUM_CHAINS = 100_000
VOCAB, K = 16, 3
CASES = {
    "temperature": SamplingParams(temperature=0.7),
    "top_k": SamplingParams(temperature=1.0, top_k=6),
    "top_p": SamplingParams(temperature=1.3, top_p=0.8),
    "top_k_top_p": SamplingParams(temperature=1.0, top_k=8, top_p=0.9),
    "min_p": SamplingParams(temperature=1.0, top_k=10, top_p=0.95, min_p=0.1),
}


def _logits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits [K+1, V] and draft logits [K, V] that differ enough to reject often."""
    g = torch.Generator().manual_seed(seed)
    target = 2.0 * torch.randn(K + 1, VOCAB, generator=g, dtype=torch.float64)
    draft = target[:K] + 1.5 * torch.randn(K, VOCAB, generator=g, dtype=torch.float64)
    return target, draft


def _run(params: SamplingParams, seed: int = 0):
    """NUM_CHAINS independent chains on the same logits; returns (p [K+1, V], out, num_accepted)."""
    target, draft = _logits(seed)
    g = torch.Generator().manual_seed(seed + 1)
    q = filter_probs(draft, params)                                               # [K, V]
    tokens = torch.multinomial(q.repeat(NUM_CHAINS, 1), 1, replacement=True, generator=g)
    tokens = tokens.view(NUM_CHAINS, K)                                           # [N, K] ~ q
    out, num_accepted = rejection_sample_batch(
        target.expand(NUM_CHAINS, -1, -1), draft.expand(NUM_CHAINS, -1, -1), tokens, params, g)
    return filter_probs(target, params), out, num_accepted


def _matches(samples: torch.Tensor, p: torch.Tensor) -> bool:
    """Chi-square goodness of fit (p-value > 1e-3) and total variation < 0.01 against p [V]."""
    counts = torch.bincount(samples, minlength=VOCAB).double()
    if counts[p == 0].sum() > 0:
        return False
    expected = p * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)]).numpy()
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)]).numpy()
    keep = exp > 0
    pvalue = stats.chisquare(obs[keep], exp[keep]).pvalue if keep.sum() > 1 else 1.0
    tv = 0.5 * float((counts / counts.sum() - p).abs().sum())
    return pvalue > 1e-3 and tv < 0.01


@pytest.mark.parametrize("name", CASES)
def test_every_position_has_the_target_distribution(name):
    p, out, num_accepted = _run(CASES[name])
    assert 0 < float(num_accepted.float().mean()) < K, "acceptance must be non-trivial"
    assert _matches(out[:, 0], p[0])
    for j in range(1, K + 1):       # position j is reached iff the first j drafts were accepted
        reached = num_accepted >= j
        assert reached.sum() > 5000
        assert _matches(out[reached, j], p[j])


@pytest.mark.parametrize("name", CASES)
def test_resampling_from_p_instead_of_the_residual_fails(name, monkeypatch):
    monkeypatch.setattr(rejection, "residual_probs", lambda p, q: p)
    p, out, _ = _run(CASES[name])
    assert not _matches(out[:, 0], p[0])


def test_accepting_every_draft_token_fails(monkeypatch):
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros(*a[0], dtype=torch.float64))
    p, out, num_accepted = _run(CASES["temperature"])
    assert bool((num_accepted == K).all())
    assert not _matches(out[:, 0], p[0])


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(top_k=1)])
def test_greedy_emits_the_target_argmax(params):
    target, _ = _logits(3)
    p, out, num_accepted = _run(params, seed=3)
    assert torch.equal(p, torch.nn.functional.one_hot(target.argmax(-1), VOCAB).double())
    assert bool((out[:, 0] == target[0].argmax()).all())
    for j in range(1, K + 1):
        assert bool((out[num_accepted >= j, j] == target[j].argmax()).all())


def test_acceptance_rate_is_the_overlap_of_p_and_q():
    params = CASES["top_k"]
    target, draft = _logits(0)
    _, _, num_accepted = _run(params)
    p, q = filter_probs(target[0], params), filter_probs(draft[0], params)
    overlap = float(torch.minimum(p, q).sum())
    assert float((num_accepted >= 1).double().mean()) == pytest.approx(overlap, abs=0.01)


def test_filter_top_k_and_top_p_act_jointly_without_min_p():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    logits = probs.log()
    joint = filter_probs(logits, SamplingParams(top_k=2, top_p=0.6))   # mass before: 0, .4
    assert torch.allclose(joint, torch.tensor([4 / 7, 3 / 7, 0, 0], dtype=torch.float64))
    seq = filter_probs(logits, SamplingParams(top_k=2, top_p=0.5, min_p=1e-9))  # renorm: 4/7, 3/7
    assert torch.allclose(seq, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    minp = filter_probs(logits, SamplingParams(min_p=0.5))             # keep p >= 0.2
    assert torch.allclose(minp, torch.tensor([4 / 9, 3 / 9, 2 / 9, 0], dtype=torch.float64))


def test_filter_temperature_and_normalisation():
    logits = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    probs = filter_probs(logits, SamplingParams(temperature=0.5))
    assert torch.allclose(probs, torch.softmax(logits.double() / 0.5, -1))
    for params in CASES.values():
        total = filter_probs(logits, params).sum(-1)
        assert torch.allclose(total, torch.ones(5, dtype=torch.float64))


def test_single_chain_emits_accepted_prefix_then_one_token():
    target, draft = _logits(5)
    params = SamplingParams()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        tokens = torch.multinomial(filter_probs(draft, params), 1, generator=g).view(K)
        emitted = rejection_sample(target, draft, tokens, params, g)
        assert 1 <= emitted.numel() <= K + 1
        assert torch.equal(emitted[:-1], tokens[: emitted.numel() - 1])


def test_identical_p_and_q_accept_everything_and_k_zero_gives_the_bonus():
    target, _ = _logits(6)
    params = SamplingParams()
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(filter_probs(target[:K], params), 1, generator=g).view(K)
    emitted = rejection_sample(target, target[:K], tokens, params, g)
    assert emitted.numel() == K + 1 and torch.equal(emitted[:K], tokens)
    bonus = rejection_sample(target[:1], target[:0], tokens[:0], params, g)
    assert bonus.numel() == 1


def test_same_seed_same_output():
    a = _run(CASES["top_p"], seed=7)[1][:1000]
    b = _run(CASES["top_p"], seed=7)[1][:1000]
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0},
                                    {"top_p": 1.5}, {"min_p": -0.1}, {"temperature": float("inf")}])
def test_bad_sampling_params_raise(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_shape_mismatch_raises():
    target, draft = _logits(0)
    with pytest.raises(ValueError, match="draft_probs"):
        rejection_sample_batch(target[None], draft[None, :2], torch.zeros(1, 2, dtype=torch.int64),
                               SamplingParams(), torch.Generator())
