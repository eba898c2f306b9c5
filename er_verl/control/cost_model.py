"""Roofline step-time model for plain decode, draft and verify steps, fitted online.

The roofline (the paper's component model) for a step that reads `bytes` of weights and runs
`flops = f·n` over n tokens is

    t(B, n) = max(bytes/BW, f·n/F) + c0 + c1·B + c2·n.

Since max(m, s·n) = m + s·max(0, n − m/s), the same model is, exactly,

    t(B, n) = fixed_s + per_seq_s·B + per_token_s·n + compute_per_token_s·max(0, n − knee)

with fixed_s = c0 + bytes/BW, compute_per_token_s = f/F and knee = knee_tokens = (bytes/BW)/(f/F),
the ridge point. For a fixed knee this is linear in the other four parameters, so the fit is a
weighted least squares for each knee on a log grid (then a finer grid around the best one): a
one-dimensional profile search, well-posed and cheap. Residuals are relative, (t − t̂)/t, and a
small ridge term pulls each parameter toward the prior, so columns the data cannot see (all
batches below the knee, or per_token_s for decode steps where n = B) keep their prior values.
With no samples the model is the prior; one sample moves it only a little.

Local correction: a global fit can be biased at batch sizes it saw little of (e.g. fitted on slow eager
steps above the CUDA-graph sizes, it overstates a plain step further down). So each prediction is
multiplied by the median measured/fitted ratio of its kind's newest ``LOCAL_RECENT`` samples in the same
power-of-two batch bucket (B in [2^j, 2^(j+1))), once that bucket holds ``MIN_LOCAL`` samples:
t(B, n) = fit(B, n) · r_bucket(B). The ratio is updated at every sample, not only at the refit: the model
has no context-length term, and within a rollout the contexts grow, so the newest steps of a bucket are
the ones to trust (issue 5, run 9: rounds measured on short warm-up contexts kept the gate on for 32
rounds per bucket, one refit period, at long contexts where a round cost 2-3 plain steps).

Step kinds and their token counts: TARGET (plain decode, n = B), DRAFT (one drafter decode step,
n = B, weight bytes ρ·W), VERIFY (the target over K + 1 positions per request, n = Σ(K_i + 1)).
"""

from __future__ import annotations

import enum
import json
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["StepKind", "StepParams", "Hardware", "ModelShape", "roofline_prior",
           "fit_step_params", "CostModel", "bucket_of", "MIN_LOCAL"]

MIN_LOCAL = 8  # samples a batch-size bucket needs before its measured/fitted ratio corrects predictions
LOCAL_RECENT = 16  # the newest samples per bucket whose median measured/fitted ratio is the correction


def bucket_of(batch_size: float) -> int:
    """Power-of-two batch bucket j of B (B in [2^j, 2^(j+1)))."""
    return max(int(batch_size), 1).bit_length() - 1


class StepKind(str, enum.Enum):
    TARGET = "target"
    DRAFT = "draft"
    VERIFY = "verify"


@dataclass(frozen=True)
class StepParams:
    """t(B, n) = fixed_s + per_seq_s·B + per_token_s·n + compute_per_token_s·max(0, n − knee)."""

    fixed_s: float
    per_seq_s: float
    per_token_s: float
    compute_per_token_s: float
    knee_tokens: float

    def predict(self, batch_size: float | np.ndarray, num_tokens: float | np.ndarray):
        """Seconds for one step over `batch_size` requests and `num_tokens` tokens."""
        over = np.maximum(0.0, np.asarray(num_tokens, dtype=np.float64) - self.knee_tokens)
        t = (self.fixed_s + self.per_seq_s * np.asarray(batch_size, dtype=np.float64)
             + self.per_token_s * np.asarray(num_tokens, dtype=np.float64)
             + self.compute_per_token_s * over)
        return float(t) if np.ndim(t) == 0 else t

    def linear(self) -> np.ndarray:
        return np.array([self.fixed_s, self.per_seq_s, self.per_token_s, self.compute_per_token_s])


@dataclass(frozen=True)
class Hardware:
    """Effective device rates. Defaults: one H200 (a large copy reaches ~4.3 TB/s; bf16 dense)."""

    bandwidth_bytes_per_s: float = 4.3e12
    flops_per_s: float = 790e12


@dataclass(frozen=True)
class ModelShape:
    """What the prior needs to know about the target and its drafter."""

    num_params: float                  # target parameters (8e9 for an 8B model)
    bytes_per_param: float = 2.0       # bf16 target weights
    draft_bytes_ratio: float = 0.28    # ρ: drafter weight bytes / target weight bytes (W4A16)
    overhead_s: float = 1.5e-3         # c0 of a target step: scheduling, launch, sampling
    per_seq_s: float = 6e-5            # c1 of a target step: per-request KV reads, bookkeeping
    per_token_s: float = 1e-5          # c2: per-token cost beyond the roofline (verify only)
    draft_overhead_s: float = 5e-4     # c0 of one graph-replayed draft step (no scheduler pass)
    draft_per_seq_s: float = 3e-5      # c1 of a draft step (shared-KV reads)


def roofline_prior(shape: ModelShape, hw: Hardware = Hardware()) -> dict[StepKind, StepParams]:
    """Step parameters from the model size and device rates, used until samples arrive."""
    if shape.num_params <= 0 or not 0 < shape.draft_bytes_ratio <= 1:
        raise ValueError(f"num_params must be > 0 and draft_bytes_ratio in (0, 1], got {shape}.")
    if hw.bandwidth_bytes_per_s <= 0 or hw.flops_per_s <= 0:
        raise ValueError(f"bandwidth and flops must be > 0, got {hw}.")
    mem_s = shape.num_params * shape.bytes_per_param / hw.bandwidth_bytes_per_s
    compute = 2.0 * shape.num_params / hw.flops_per_s       # seconds per token above the knee

    def params(bytes_ratio: float, c0: float, c1: float, c2: float) -> StepParams:
        m = bytes_ratio * mem_s
        return StepParams(c0 + m, c1, c2, compute, m / compute)

    s = shape
    return {StepKind.TARGET: params(1.0, s.overhead_s, s.per_seq_s, 0.0),
            StepKind.DRAFT: params(s.draft_bytes_ratio, s.draft_overhead_s, s.draft_per_seq_s, 0.0),
            StepKind.VERIFY: params(1.0, s.overhead_s, s.per_seq_s, s.per_token_s)}


def _groups(b, n, t, y):
    """Samples that share (b, n) share their feature row f, so Σ_i ((f·θ − y_i)/t_i)² over a group equals
    W·(f·θ)² − 2V·f·θ + Σ_i y_i²/t_i² with W = Σ 1/t_i², V = Σ y_i/t_i²: one row √W·f with target V/√W
    leaves the same θ and the same loss up to a constant (``rest``). A decode window of 2048 samples holds a few
    hundred distinct batch sizes, so each knee's solve shrinks accordingly. → (b, n, √W, V/√W, rest)."""
    keys, inverse = np.unique(np.stack([b, n], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    w = np.bincount(inverse, weights=1.0 / t ** 2)
    v = np.bincount(inverse, weights=y / t ** 2)
    root = np.sqrt(w)
    rest = float(np.sum((y / t) ** 2) - np.sum(v * v / w))
    return keys[:, 0], keys[:, 1], root, v / root, rest


def _solve(groups, knees: np.ndarray, prior: StepParams, free: np.ndarray, weight: float):
    """Ridge-to-prior least squares y ≈ x·θ (rows scaled by 1/t, grouped by ``_groups``) at each knee of
    ``knees`` at once → (θ [K, free], loss [K]). Only the column max(0, n − knee) depends on the knee, so the
    normal equations (x'x + w·D⁻²) θ = x'r + w·D⁻²·θ₀ (D the prior's scales) are built for all knees from a few
    products and solved as one batch of ≤ 4×4 systems; loss = |r|² + w·|θ₀/D|² − θ·(right-hand side)."""
    b, n, root, target, rest = groups
    knees = np.asarray(knees, dtype=np.float64)
    fixed = np.stack([np.ones_like(b), b, n], axis=1) * root[:, None]            # [G, 3]
    hinge = np.maximum(0.0, n[:, None] - knees[None, :]) * root[:, None]          # [G, K]
    gram = np.zeros((len(knees), 4, 4))
    gram[:, :3, :3] = fixed.T @ fixed
    gram[:, :3, 3] = gram[:, 3, :3] = (fixed.T @ hinge).T
    gram[:, 3, 3] = np.einsum("gk,gk->k", hinge, hinge)
    moment = np.empty((len(knees), 4))
    moment[:, :3] = fixed.T @ target
    moment[:, 3] = hinge.T @ target
    theta0 = prior.linear()[free]
    ref = np.array([1.0, 64.0, 64.0, 64.0])[free]       # feature size where a rate matters
    scale = np.maximum(np.abs(theta0), 0.01 * prior.fixed_s / ref)
    lhs = gram[:, free][:, :, free] + np.diag(weight / scale ** 2)
    rhs = moment[:, free] + weight * theta0 / scale ** 2
    # solved in units of the prior's scales (θ = D·φ), so the columns' sizes (1 against n − knee) do not matter
    phi = np.linalg.solve(lhs * scale[:, None] * scale[None, :], (rhs * scale)[..., None])[..., 0]
    theta = phi * scale
    knee_pen = weight * (np.log(knees / prior.knee_tokens) / np.log(4.0)) ** 2
    loss = float(target @ target) + weight * float(np.sum((theta0 / scale) ** 2)) - np.sum(theta * rhs, axis=1)
    return theta, loss + rest + knee_pen


def fit_step_params(batch_sizes: Sequence[float], num_tokens: Sequence[float],
                    seconds: Sequence[float], prior: StepParams, *,
                    fit_per_token: bool = True, prior_weight: float = 1e-3) -> StepParams:
    """Profile least squares: for each knee on a log grid solve the linear fit, keep the best.

    Minimises Σ((t − t̂)/t)² + w·Σ((θ − θ_prior)/scale)² + w·(log₄(knee/knee_prior))², with
    w = `prior_weight` (a 100 % move of one parameter costs about one sample's squared 3 % error).
    `fit_per_token=False` holds per_token_s at the prior (decode kinds, where n = B makes it
    collinear with per_seq_s). Negative fitted rates are clipped to 0.
    """
    b, n, t = (np.asarray(v, dtype=np.float64) for v in (batch_sizes, num_tokens, seconds))
    if len(t) == 0:
        return prior
    if np.any(t <= 0) or np.any(b < 1) or np.any(n < b):
        raise ValueError("seconds must be > 0, batch_sizes >= 1 and num_tokens >= batch_sizes.")
    free = np.array([True, True, fit_per_token, True])
    y = t - (0.0 if fit_per_token else prior.per_token_s * n)

    groups = _groups(b, n, t, y)
    best = prior.knee_tokens
    for grid in (np.geomspace(1 / 16, 16, 65), np.geomspace(1 / 1.1, 1.1, 41)):  # coarse, then around the best
        knees = best * grid
        thetas, losses = _solve(groups, knees, prior, free, prior_weight)
        i = int(np.argmin(losses))
        best, theta = float(knees[i]), thetas[i]
    linear = prior.linear()
    linear[free] = np.maximum(theta, 0.0)
    return StepParams(*linear.tolist(), knee_tokens=float(best))


def _local_ratio(fitted: StepParams, recent) -> float | None:
    """Median of measured / fitted over a bucket's newest samples (b, n, t); None below ``MIN_LOCAL``."""
    if len(recent) < MIN_LOCAL:
        return None
    b, n, t = (np.fromiter(col, dtype=np.float64, count=len(recent)) for col in zip(*recent))
    return float(np.median(t / fitted.predict(b, n)))


def _scaled(p: StepParams, factor: float) -> StepParams:
    """Every time term of ``p`` times ``factor`` (the knee, a token count, unchanged)."""
    return StepParams(p.fixed_s * factor, p.per_seq_s * factor, p.per_token_s * factor,
                      p.compute_per_token_s * factor, p.knee_tokens)


class CostModel:
    """Per-kind step-time model: prior until samples arrive, refitted every `refit_every` samples.

    Samples are (kind, batch_size, seconds, k): one TARGET step, ONE draft step (divide a K-step
    drafting time by K), or one VERIFY pass with draft length k. The newest `window` samples per
    kind are kept, so the fit follows drift.
    """

    def __init__(self, prior: Mapping[StepKind, StepParams], *, window: int = 2048,
                 refit_every: int = 32, prior_weight: float = 1e-3) -> None:
        if window < 1 or refit_every < 1 or prior_weight <= 0:
            raise ValueError(f"window and refit_every must be >= 1 and prior_weight > 0, got "
                             f"{window}, {refit_every}, {prior_weight}.")
        self.prior = {StepKind(k): v for k, v in prior.items()}
        if set(self.prior) != set(StepKind):
            raise ValueError(f"prior must have one StepParams for each kind "
                             f"{[k.value for k in StepKind]}, got {list(prior)}.")
        self._fitted = dict(self.prior)
        self._samples = {k: deque(maxlen=window) for k in StepKind}
        self._pending = {k: 0 for k in StepKind}
        self._counts = {k: Counter() for k in StepKind}  # samples per batch bucket, in the window
        self._local: dict[StepKind, dict[int, float]] = {k: {} for k in StepKind}  # bucket -> measured/fitted
        self._recent = {k: {} for k in StepKind}  # bucket -> deque of its newest LOCAL_RECENT (b, n, t)
        self._target_scale = 1.0  # measured / prior TARGET time, updated at each TARGET refit
        self.refit_every, self.prior_weight = refit_every, prior_weight

    @classmethod
    def from_roofline(cls, shape: ModelShape, hw: Hardware = Hardware(), **kwargs) -> CostModel:
        return cls(roofline_prior(shape, hw), **kwargs)

    def observe(self, kind: StepKind | str, batch_size: int, seconds: float, k: int = 0) -> None:
        """Record one measured step (cheap; the fit runs lazily on the next `params` call)."""
        kind = StepKind(kind)
        if batch_size < 1 or k < 0 or not seconds > 0:
            raise ValueError(f"batch_size must be >= 1, k >= 0 and seconds > 0, got "
                             f"{batch_size}, {k}, {seconds}.")
        tokens = batch_size * (k + 1) if kind is StepKind.VERIFY else batch_size
        samples, counts = self._samples[kind], self._counts[kind]
        if len(samples) == samples.maxlen:  # samples[0] is evicted by the append below
            self._evict(kind, bucket_of(samples[0][0]))
        sample = (float(batch_size), float(tokens), float(seconds))
        samples.append(sample)
        bucket = bucket_of(batch_size)
        counts[bucket] += 1
        self._pending[kind] += 1
        if counts[bucket] == MIN_LOCAL:
            self._pending[kind] = max(self._pending[kind], self.refit_every)  # its bucket can correct now
        recent = self._recent[kind].setdefault(bucket, deque(maxlen=LOCAL_RECENT))
        recent.append(sample)
        ratio = _local_ratio(self._fitted[kind], recent)
        if ratio is not None:
            self._local[kind][bucket] = ratio

    def _evict(self, kind: StepKind, bucket: int) -> None:
        """A bucket's oldest sample leaves the window: its correction keeps only samples still in it."""
        self._counts[kind][bucket] -= 1
        recent = self._recent[kind].get(bucket)
        if recent is not None and len(recent) > self._counts[kind][bucket]:
            recent.popleft()
            ratio = _local_ratio(self._fitted[kind], recent)
            if ratio is None:
                self._local[kind].pop(bucket, None)
            else:
                self._local[kind][bucket] = ratio

    def num_samples(self, kind: StepKind | str) -> int:
        return len(self._samples[StepKind(kind)])

    def bucket_samples(self, kind: StepKind | str, batch_size: int) -> int:
        """Stored samples of ``kind`` in ``batch_size``'s power-of-two bucket."""
        return self._counts[StepKind(kind)][bucket_of(batch_size)]

    def fit(self, kind: StepKind | str | None = None) -> None:
        """Refit one kind (or all) from its stored samples now."""
        for k in [StepKind(kind)] if kind is not None else list(StepKind):
            cols = list(zip(*self._samples[k])) or [[], [], []]
            self._fitted[k] = fit_step_params(*cols, prior=self.prior[k],
                                              fit_per_token=k is StepKind.VERIFY,
                                              prior_weight=self.prior_weight)
            self._pending[k] = 0
            if k is StepKind.TARGET and cols[0]:
                b = float(np.mean(cols[0]))
                self._target_scale = self._fitted[k].predict(b, b) / self.prior[k].predict(b, b)
            self._local[k] = {j: r for j, recent in self._recent[k].items()
                              if (r := _local_ratio(self._fitted[k], recent)) is not None}

    def params(self, kind: StepKind | str) -> StepParams:
        """Fitted parameters of ``kind``; a kind with no samples yet borrows TARGET's calibration
        (:meth:`target_scale`), so an unmeasured draft or verify step is never predicted from the bare
        roofline next to a measured target step (which would make speculation look free)."""
        kind = StepKind(kind)
        pending, stored = self._pending[kind], len(self._samples[kind])
        if pending >= self.refit_every or (pending and stored < self.refit_every):
            self.fit(kind)
        if stored == 0 and kind is not StepKind.TARGET:
            return _scaled(self.prior[kind], self.target_scale())
        return self._fitted[kind]

    def target_scale(self) -> float:
        """Measured / prior TARGET step time at the mean measured batch size (1.0 before any sample);
        computed when TARGET is refitted, so asking costs nothing on the decode path."""
        self.params(StepKind.TARGET)  # refits TARGET (and its scale) if samples are pending
        return self._target_scale

    def predict(self, kind: StepKind | str, batch_size: int, num_tokens: int) -> float:
        """Seconds for one ``kind`` step: the fit times its bucket's measured/fitted ratio over the bucket's
        newest ``LOCAL_RECENT`` samples (1 while the bucket has fewer than ``MIN_LOCAL``)."""
        kind = StepKind(kind)
        t = self.params(kind).predict(batch_size, num_tokens)
        return t * self._local[kind].get(bucket_of(batch_size), 1.0)

    def t_ar(self, batch_size: int) -> float:
        """Seconds for one plain target decode step at batch B."""
        return self.predict(StepKind.TARGET, batch_size, batch_size)

    def t_draft(self, batch_size: int) -> float:
        """Seconds for one drafter decode step at batch B."""
        return self.predict(StepKind.DRAFT, batch_size, batch_size)

    def t_verify(self, batch_size: int, k: int) -> float:
        """Seconds for one verify pass over B·(K + 1) tokens."""
        return self.predict(StepKind.VERIFY, batch_size, batch_size * (k + 1))

    def round_seconds(self, ks: Sequence[int]) -> float:
        """One round for a batch with per-request draft lengths K_i (ragged verify):

        Σ_{j=1..max K} t_draft(#{i: K_i >= j}) + t_verify over Σ(K_i + 1) tokens;
        all K_i = 0 → t_ar(B). Draft step j runs only the requests with K_i >= j.
        """
        ks = np.asarray(ks, dtype=np.int64)
        if ks.size == 0 or np.any(ks < 0):
            raise ValueError(f"ks must be a non-empty list of draft lengths >= 0, "
                             f"got {ks.tolist()}.")
        if not ks.any():
            return self.t_ar(ks.size)
        drafts = sum(self.t_draft(int(np.sum(ks >= j))) for j in range(1, int(ks.max()) + 1))
        return drafts + self.predict(StepKind.VERIFY, ks.size, int(np.sum(ks + 1)))

    def to_dict(self) -> dict:
        return {"format": "er_verl.cost_model/1",
                "params": {k.value: asdict(self.params(k)) for k in StepKind}}

    @classmethod
    def from_dict(cls, data: Mapping, **kwargs) -> CostModel:
        """A model whose prior is a saved calibration (samples then refine it as usual)."""
        if data.get("format") != "er_verl.cost_model/1":
            raise ValueError(f"calibration format must be 'er_verl.cost_model/1', "
                             f"got {data.get('format')!r}.")
        return cls({StepKind(k): StepParams(**v) for k, v in data["params"].items()}, **kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> CostModel:
        return cls.from_dict(json.loads(Path(path).read_text()), **kwargs)
