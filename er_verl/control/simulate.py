"""Predict rollout latency with and without speculation (CPU), with the engine's controller.

A rollout is a set of requests with output lengths L_i, all admitted at once; plain decoding
runs max L_i steps at batch B_t = #{i: L_i > t}, each costing t_ar(B_t). With speculation each
round asks the gate (with per-request posterior means of α), and if it says on, plans K from one
Thompson draw of α per group (`ThompsonBandit.choose_batch`: per-request K for a ragged verify,
or one K for the batch); accepted counts are drawn from the truncated geometric with the
group's true α; the round
costs `CostModel.round_seconds(K_i)`. The same `CostModel` is the simulated truth and the
controller's belief, so this measures the policy, not the fit.

`er-verl simulate` calls `add_arguments` and `main`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from er_verl.control.acceptance import BetaPosterior
from er_verl.control.bandit import ThompsonBandit, arms_up_to
from er_verl.control.cost_model import CostModel, Hardware, ModelShape, StepKind
from er_verl.control.gate import Gate

__all__ = ["AcceptanceSpec", "ControllerConfig", "TimelinePoint", "SimulationResult",
           "lengths_from_batch_trace", "long_tailed_lengths", "simulate", "add_arguments", "main"]


@dataclass(frozen=True)
class AcceptanceSpec:
    """Group α_g ~ Beta(mean·c, (1 − mean)·c); requests i·group_size.. share group i."""

    mean: float = 0.8
    concentration: float = 20.0   # c; math.inf makes every group's α equal to mean
    group_size: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.mean <= 1 or self.concentration <= 0 or self.group_size < 1:
            raise ValueError(f"need mean in [0, 1], concentration > 0 and group_size >= 1, "
                             f"got {self}.")

    def sample(self, num_groups: int, rng: np.random.Generator) -> np.ndarray:
        if self.mean in (0.0, 1.0) or math.isinf(self.concentration):
            return np.full(num_groups, self.mean)
        return rng.beta(self.mean * self.concentration, (1 - self.mean) * self.concentration,
                        size=num_groups)


@dataclass(frozen=True)
class ControllerConfig:
    max_k: int = 8                  # largest draft length
    margin: float = 0.05            # gate: speculate iff max_K S > 1 + margin
    hysteresis: float = 0.03        # gate: once on, stay on while max_K S >= 1 + margin − this
    per_request_k: bool = True      # ragged verify (K per group) vs one K per batch
    prior_mean: float = 0.5         # global prior on α before any observation (the engine's: Beta(1, 1))
    prior_strength: float = 2.0     # its weight in pseudo-observations
    group_prior_strength: float = 4.0
    optimism: float = 1.0           # the gate sees mean + this many sd of each group's α (as the engine's)


@dataclass(frozen=True)
class TimelinePoint:
    time_s: float        # start of the step or round
    duration_s: float
    batch_size: int
    speculate: bool
    mean_k: float        # mean draft length over the batch (0 when off)
    tokens: int          # tokens emitted by the whole batch


@dataclass
class SimulationResult:
    plain_latency_s: float
    spec_latency_s: float
    num_tokens: int
    plain_timeline: list[TimelinePoint] = field(repr=False)
    spec_timeline: list[TimelinePoint] = field(repr=False)

    @property
    def speedup(self) -> float:
        return self.plain_latency_s / self.spec_latency_s if self.spec_latency_s > 0 else 1.0

    def to_dict(self) -> dict:
        return {"plain_latency_s": self.plain_latency_s, "spec_latency_s": self.spec_latency_s,
                "speedup": self.speedup, "num_tokens": self.num_tokens,
                "plain_timeline": [asdict(p) for p in self.plain_timeline],
                "spec_timeline": [asdict(p) for p in self.spec_timeline]}


def lengths_from_batch_trace(batch_sizes: Sequence[int]) -> list[int]:
    """Output lengths that produce a non-increasing running-batch trace: #{L_i > t} = B_t."""
    b = np.asarray(list(batch_sizes) + [0], dtype=np.int64)
    if np.any(b < 0) or np.any(np.diff(b) > 0):
        raise ValueError(f"batch_sizes must be non-increasing and >= 0 (all requests start at "
                         f"step 0), got {list(batch_sizes)[:16]}...")
    finished = b[:-1] - b[1:]                      # requests whose last step is t
    return np.repeat(np.arange(1, len(finished) + 1), finished).tolist()


def long_tailed_lengths(num_requests: int, max_len: int, rng: np.random.Generator, *,
                        median_len: int = 1024, sigma: float = 1.0) -> list[int]:
    """Log-normal output lengths (median `median_len`), clipped to [1, max_len]."""
    raw = rng.lognormal(math.log(median_len), sigma, size=num_requests)
    return np.clip(np.round(raw), 1, max_len).astype(np.int64).tolist()


def _plain(lengths: np.ndarray, cost: CostModel) -> tuple[float, list[TimelinePoint]]:
    steps = int(lengths.max()) if lengths.size else 0
    finished_by = np.cumsum(np.bincount(lengths, minlength=steps + 1))[:steps]   # #{L_i <= t}
    batch = (lengths.size - finished_by).astype(np.int64)                      # #{L_i > t}
    times = np.asarray(cost.params(StepKind.TARGET).predict(batch, batch)) if steps else np.zeros(0)
    starts = np.concatenate([[0.0], np.cumsum(times)[:-1]]) if steps else times
    timeline = [TimelinePoint(float(s), float(d), int(b), False, 0.0, int(b))
                for s, d, b in zip(starts, times, batch)]
    return float(times.sum()), timeline


def _accepted(true_alpha: np.ndarray, ks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Truncated geometric: leading run of Bernoulli(α) successes, at most K_i."""
    width = int(ks.max()) if ks.size else 0
    ok = (rng.random((ks.size, width)) < true_alpha[:, None]) & (np.arange(width) < ks[:, None])
    return np.cumprod(ok, axis=1).sum(axis=1).astype(np.int64)


def _spec_round(active, groups, bandit, gate, cfg):
    """One decision: (ks [B], speculate)."""
    entries = groups[active].tolist()
    if not gate.decide(active.size, bandit.optimistic_alphas(entries, cfg.optimism)).speculate:
        return np.zeros(active.size, dtype=np.int64), False
    arms = bandit.choose_batch(entries, per_request=cfg.per_request_k)
    return np.array([a.k for a in arms], dtype=np.int64), True


def simulate(output_lengths: Sequence[int] | None = None, *, cost: CostModel,
             batch_trace: Sequence[int] | None = None,
             acceptance: AcceptanceSpec = AcceptanceSpec(),
             config: ControllerConfig = ControllerConfig(), seed: int = 0) -> SimulationResult:
    """Latency of one rollout, plain and with the controller; give lengths or a batch trace."""
    if (output_lengths is None) == (batch_trace is None):
        raise ValueError("give exactly one of output_lengths and batch_trace.")
    lengths = np.asarray(output_lengths if output_lengths is not None
                         else lengths_from_batch_trace(batch_trace), dtype=np.int64)
    if np.any(lengths < 0):
        raise ValueError("output_lengths must be >= 0.")
    rng = np.random.default_rng(seed)
    groups = np.arange(lengths.size) // acceptance.group_size
    true_alpha = acceptance.sample(int(groups.max()) + 1 if groups.size else 0, rng)[groups]
    plain_s, plain_timeline = _plain(lengths, cost)
    prior = BetaPosterior.from_mean(config.prior_mean, config.prior_strength)
    bandit = ThompsonBandit(arms_up_to(config.max_k), cost, rng, prior=prior,
                            group_prior_strength=config.group_prior_strength)
    gate = Gate(cost, max_k=config.max_k, margin=config.margin, hysteresis=config.hysteresis)
    remaining, now, timeline = lengths.copy(), 0.0, []
    while (active := np.flatnonzero(remaining > 0)).size:
        ks, on = _spec_round(active, groups, bandit, gate, config)
        accepted = _accepted(true_alpha[active], ks, rng)
        emitted = np.minimum(accepted + 1, remaining[active])
        if on:
            bandit.update_many(groups[active].tolist(), ks.tolist(), accepted.tolist())
        dt = cost.round_seconds(ks)
        timeline.append(TimelinePoint(now, dt, int(active.size), on, float(ks.mean()),
                                      int(emitted.sum())))
        remaining[active] -= emitted
        now += dt
    return SimulationResult(plain_s, now, int(lengths.sum()), plain_timeline, timeline)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `er-verl simulate`."""
    add = parser.add_argument
    add("--num-params", type=float, default=8e9, help="target parameters (prior cost model)")
    add("--bandwidth", type=float, default=4.3e12, help="effective HBM bytes/s")
    add("--flops", type=float, default=790e12, help="effective bf16 FLOP/s")
    add("--draft-bytes-ratio", type=float, default=0.28, help="drafter/target weight bytes ρ")
    add("--calibration", type=Path, help="saved CostModel JSON; replaces the roofline prior")
    add("--lengths", type=Path, help="JSON list of output lengths")
    add("--batch-trace", type=Path, help="JSON list of per-step running batch sizes")
    add("--num-prompts", type=int, default=128, help="synthetic workload: prompts")
    add("--group-size", type=int, default=8, help="samples per prompt (one bandit group)")
    add("--max-len", type=int, default=8192, help="synthetic workload: max output length")
    add("--median-len", type=int, default=1024, help="synthetic workload: median output length")
    add("--alpha-mean", type=float, default=0.8, help="mean per-token acceptance over groups")
    add("--alpha-concentration", type=float, default=20.0, help="Beta concentration of group α")
    add("--max-k", type=int, default=8)
    add("--margin", type=float, default=0.05)
    add("--batch-k", action="store_true", help="one K per batch instead of one per group")
    add("--seed", type=int, default=0)
    add("--json", type=Path, help="write the result (with timelines) here")


def main(args: argparse.Namespace) -> int:
    cost = (CostModel.load(args.calibration) if args.calibration else CostModel.from_roofline(
        ModelShape(args.num_params, draft_bytes_ratio=args.draft_bytes_ratio),
        Hardware(args.bandwidth, args.flops)))
    lengths = trace = None
    if args.lengths:
        lengths = json.loads(args.lengths.read_text())
    elif args.batch_trace:
        trace = json.loads(args.batch_trace.read_text())
    else:
        lengths = long_tailed_lengths(args.num_prompts * args.group_size, args.max_len,
                                      np.random.default_rng(args.seed), median_len=args.median_len)
    config = ControllerConfig(max_k=args.max_k, margin=args.margin, per_request_k=not args.batch_k)
    result = simulate(lengths, batch_trace=trace, cost=cost, config=config, seed=args.seed,
                      acceptance=AcceptanceSpec(args.alpha_mean, args.alpha_concentration,
                                                args.group_size))
    on = sum(p.duration_s for p in result.spec_timeline if p.speculate)
    print(f"tokens {result.num_tokens}  plain {result.plain_latency_s:.2f} s  "
          f"speculative {result.spec_latency_s:.2f} s  speedup {result.speedup:.3f}x  "
          f"(speculating {on:.2f} s of it)")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict()))
    return 0
