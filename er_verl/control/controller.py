"""The controller the engine asks once per decode batch: which K (0 = plain decoding)?

It joins the pieces of this package (no sglang, no torch):

* the gate (``gate.Gate``) decides whether any K in 1..Kmax beats a plain step for this batch by the
  margin, from the cost model and an optimistic acceptance of each running request's group: the posterior
  mean plus ``optimism`` standard deviations (``ThompsonBandit.optimistic_alphas``). With the mean alone
  a group nothing is known about sits at the prior, the gate stays off, no round runs and nothing is
  ever learned: in every GPU rollout up to run 8 of issue 5 the controller speculated in 0–0.02% of decode
  calls. The bound tries such groups where the batch is small enough to pay, and shrinks to the mean as
  their verify results come in;
* the bandit (``bandit.ThompsonBandit``) then picks the K that maximizes the batch's expected tokens
  per second, from one Thompson draw α̃_g per group (the engine runs one K per batch: ragged K inside a
  verify pass is not built yet, so ``choose_batch`` with ``per_request=False``);
* the cost model (``cost_model.CostModel``) starts from a roofline prior or a saved calibration and is
  refitted online from the step times the engine measures (``observe_step``);
* verify results update the group posteriors (``observe_round``), and a weight sync discounts them
  (``on_weight_sync``): the policy moved, old acceptance is weaker evidence;
* measure before speculating: while speculation is on no plain step is measured, so a wrong plain-step
  prediction would never be corrected. When the gate says on at a batch size whose power-of-two bucket
  holds fewer than ``cost_model.MIN_LOCAL`` measured plain steps, the batch runs plain instead (a probe);
  the cost model then predicts plain steps there from that bucket's measurements (its local correction).
  At most ``MIN_LOCAL`` probes per bucket while the measurements stay in the cost model's window.

Modes (``EfficientConfig.gate``): ``auto`` as above, ``always`` speculates at every batch size (K
from the bandit, or the best predicted K), ``never`` always answers 0.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from er_verl.control.bandit import ThompsonBandit, arms_up_to
from er_verl.control.cost_model import MIN_LOCAL, CostModel, Hardware, ModelShape, StepKind
from er_verl.control.gate import Gate, speedups

MODES = ("auto", "always", "never")


class Controller:
    def __init__(self, max_k: int, cost: CostModel, *, mode: str = "auto", margin: float = 0.05,
                 bandit: bool = True, sync_discount: float = 0.5, seed: int = 0, optimism: float = 1.0) -> None:
        if mode not in MODES:
            raise ValueError(f"controller mode {mode!r} is invalid: allowed is one of {', '.join(MODES)}.")
        if not optimism >= 0:
            raise ValueError(f"optimism {optimism!r} is invalid: the gate's posterior standard deviations "
                             "above the mean must be >= 0.")
        self.max_k, self.cost, self.mode, self.use_bandit = max_k, cost, mode, bandit
        self.optimism = optimism
        self.gate = Gate(cost, max_k=max_k, margin=margin, hysteresis=min(0.03, margin))
        self.bandit = ThompsonBandit(arms_up_to(max_k), cost, np.random.default_rng(seed),
                                     sync_discount=sync_discount)
        self.decisions = {"on": 0, "off": 0, "probe": 0}

    @classmethod
    def from_config(cls, cfg, shape: ModelShape, hw: Hardware = Hardware()) -> "Controller":
        """From an ``EfficientConfig``: a saved calibration when ``calibration_path`` is set, else the
        roofline prior of ``shape`` on ``hw`` (refitted online either way)."""
        cost = CostModel.load(cfg.calibration_path) if cfg.calibration_path else CostModel.from_roofline(shape, hw)
        return cls(cfg.max_draft_len, cost, mode=cfg.gate, margin=cfg.gate_margin, bandit=cfg.bandit,
                   sync_discount=cfg.sync_discount, seed=cfg.seed)

    def choose(self, groups: Sequence[Hashable]) -> int:
        """K for a batch with one group key per running request (0: decode plainly)."""
        if not groups or self.mode == "never":
            return 0
        if self.mode == "auto":
            decision = self.gate.decide(len(groups), self.bandit.optimistic_alphas(groups, self.optimism))
            if decision.speculate and self.cost.bucket_samples(StepKind.TARGET, len(groups)) < MIN_LOCAL:
                self.decisions["probe"] += 1  # measure a plain step here first
                return 0
            self.decisions["on" if decision.speculate else "off"] += 1
            if not decision.speculate:
                return 0
            best = decision.k  # the K that pays if the bound holds: its round tests exactly that
        else:
            best = int(np.argmax(speedups(self.bandit.posterior_means(groups), len(groups), self.max_k,
                                          self.cost))) + 1
        if not self.use_bandit:
            return best
        return self.bandit.choose_batch(list(groups), per_request=False)[0].k

    def describe(self, groups: Sequence[Hashable]) -> str:
        """One line on what the controller predicts for a batch with these group keys (for profiling; it
        costs a few predictions, so not for every step): plain / draft / verify(K) times, the gate's
        optimistic and the posterior-mean acceptance, and S(K) under each."""
        b = len(groups)
        if b == 0:
            return "controller: empty batch"
        ms = lambda seconds: f"{seconds * 1e3:.2f}"  # noqa: E731
        optimistic = self.bandit.optimistic_alphas(groups, self.optimism)
        means = self.bandit.posterior_means(groups)
        fmt = lambda xs: "[" + " ".join(f"{x:.2f}" for x in xs) + "]"  # noqa: E731
        return (f"controller bs={b}: t_ar={ms(self.cost.t_ar(b))} ms draft={ms(self.cost.t_draft(b))} ms "
                f"verify(K=1..{self.max_k})=[{' '.join(ms(self.cost.t_verify(b, k)) for k in range(1, self.max_k + 1))}] ms "
                f"alpha optimistic={optimistic.mean():.3f} mean={means.mean():.3f} "
                f"S optimistic={fmt(speedups(optimistic, b, self.max_k, self.cost))} "
                f"S mean={fmt(speedups(means, b, self.max_k, self.cost))} decisions={self.decisions}")

    def observe_round(self, groups: Sequence[Hashable], k: int, num_accepted: Sequence[int]) -> None:
        """One verify pass: request i drafted ``k`` tokens and ``num_accepted[i]`` of them were accepted."""
        if k > 0 and len(groups):
            self.bandit.update_many(list(groups), [k] * len(groups), [int(a) for a in num_accepted])

    def observe_step(self, kind: StepKind | str, batch_size: int, seconds: float, k: int = 0) -> None:
        """A measured step: TARGET (plain, K=0), one DRAFT step, or a VERIFY pass over K+1 tokens."""
        if seconds > 0 and batch_size > 0:
            self.cost.observe(kind, batch_size, seconds, k)

    def on_weight_sync(self) -> None:
        self.bandit.on_weight_sync()
