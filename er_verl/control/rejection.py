"""Reference speculative rejection sampling: exact, on CPU, batched over independent chains.

Notation (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding",
arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318): p = the target's filtered distribution,
q = the draft's filtered distribution, both made by `filter_probs` with the request's sampling
parameters. For draft tokens d_1..d_K sampled from q:

- d_j is *accepted* with probability min(1, p_j(d_j) / q_j(d_j)) while every earlier one was;
- at the first rejection j, a *recovered* token is sampled from norm(max(0, p_j − q_j));
- when all K are accepted, a *bonus* token is sampled from p_{K+1}.

A round emits the accepted tokens plus one recovered or bonus token (1..K+1 tokens), and every
emitted token has exactly the target's distribution. Greedy (temperature 0 or top_k 1) is the
special case p = one-hot(argmax): a draft token is accepted iff it is the target's argmax.

This module is the specification the engine's GPU sampler is tested against; it computes in
float64 and favours clarity over speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "filter_probs", "residual_probs", "rejection_sample",
           "rejection_sample_batch", "rejection_sample_from_probs"]

_GREEDY_EPS = 1e-6  # SGLang treats temperature below this as greedy


@dataclass(frozen=True)
class SamplingParams:
    """SGLang's non-speculative sampling parameters (sglang/srt/sampling/sampling_params.py)."""

    temperature: float = 1.0   # 0 (below 1e-6) means greedy
    top_k: int = -1            # -1 disables; 1 means greedy
    top_p: float = 1.0         # in (0, 1]; 1 disables
    min_p: float = 0.0         # in [0, 1]; 0 disables

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and self.temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}.")
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"top_k must be -1 (disabled) or >= 1, got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must lie in [0, 1], got {self.min_p}.")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS or self.top_k == 1


def filter_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits [..., V] → the distribution SGLang samples from, [..., V] float64.

    Greedy: one-hot(argmax logits). Otherwise probs = softmax(logits / T), sorted descending, and
    - without min-p, top-k and top-p act jointly on those probs (flashinfer filter_apply_order=
      "joint", SGLang's default): keep rank < top_k and Σ(probs ranked before) < top_p;
    - with min-p (SGLang's flashinfer path: top_k_renorm → top_p_renorm → min_p sampling):
      top-k, renormalise, top-p on the renormalised probs, then keep probs >= min_p · max prob;
    and the kept probs are renormalised. Ties at a threshold are implementation-defined.
    """
    logits = logits.to(torch.float64)
    if params.is_greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float64)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(probs.shape[-1])
    top_k = probs.shape[-1] if params.top_k == -1 else params.top_k
    kept = sorted_probs * (rank < top_k)
    if params.min_p > 0.0:
        kept = kept / kept.sum(-1, keepdim=True)
    if params.top_p < 1.0:
        ranked = kept if params.min_p > 0.0 else sorted_probs     # sequential vs joint
        kept = kept * (ranked.cumsum(-1) - ranked < params.top_p)
    if params.min_p > 0.0:
        kept = kept * (kept >= params.min_p * kept[..., :1])
    kept = kept / kept.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, order, kept)


def residual_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) over the last axis, [..., V]; falls back to p where p = q (no mass)."""
    residual = (p - q).clamp_min(0.0)
    mass = residual.sum(-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(1e-300), p)


def rejection_sample_from_probs(
    target_probs: torch.Tensor,  # [N, K+1, V] p at each draft position plus the bonus position
    draft_probs: torch.Tensor,   # [N, K, V] q the draft tokens were sampled from
    draft_tokens: torch.Tensor,  # [N, K] int64
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run N independent chains; returns (output_tokens [N, K+1] −1-padded, num_accepted [N]).

    Chain n emits its first num_accepted[n] draft tokens, then one recovered or bonus token.
    Acceptance test: u · q(d) < p(d) with u ~ U[0, 1), i.e. probability min(1, p(d)/q(d)).
    """
    n, k_plus_1, vocab = target_probs.shape
    k = k_plus_1 - 1
    if draft_probs.shape != (n, k, vocab) or draft_tokens.shape != (n, k):
        raise ValueError(f"draft_probs must be [N={n}, K={k}, V={vocab}] and draft_tokens [N, K], "
                         f"got {tuple(draft_probs.shape)} and {tuple(draft_tokens.shape)}.")
    p_d = target_probs[:, :k].gather(-1, draft_tokens[..., None]).squeeze(-1)   # [N, K]
    q_d = draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1)           # [N, K]
    u = torch.rand((n, k), generator=generator, dtype=torch.float64)
    accepted = (u * q_d < p_d).to(torch.int64).cumprod(-1)                     # [N, K]
    num_accepted = accepted.sum(-1)                                             # [N]
    final = _final_probs(target_probs, draft_probs, num_accepted)               # [N, V]
    last = torch.multinomial(final, 1, generator=generator).squeeze(-1)         # [N]
    out = torch.full((n, k + 1), -1, dtype=torch.int64)
    out[:, :k] = torch.where(accepted.bool(), draft_tokens, -1)
    out.scatter_(1, num_accepted[:, None], last[:, None])
    return out, num_accepted


def _final_probs(p: torch.Tensor, q: torch.Tensor, num_accepted: torch.Tensor) -> torch.Tensor:
    """Row n: norm(max(0, p_j − q_j)) at the first rejection j = num_accepted[n] < K,
    else the bonus row p_{K+1}."""
    vocab, k = p.shape[-1], q.shape[1]
    index = num_accepted[:, None, None].expand(-1, 1, vocab)
    p_j = p.gather(1, index).squeeze(1)                                        # [N, V]
    if k == 0:
        return p_j
    q_j = q.gather(1, index.clamp_max(k - 1)).squeeze(1)                       # [N, V]
    return torch.where((num_accepted < k)[:, None], residual_probs(p_j, q_j), p_j)


def rejection_sample_batch(
    target_logits: torch.Tensor,  # [N, K+1, V]
    draft_logits: torch.Tensor,   # [N, K, V]
    draft_tokens: torch.Tensor,   # [N, K] sampled from filter_probs(draft_logits, params)
    params: SamplingParams,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter both sides with `params`, then `rejection_sample_from_probs`."""
    return rejection_sample_from_probs(filter_probs(target_logits, params),
                                       filter_probs(draft_logits, params),
                                       draft_tokens.to(torch.int64), generator)


def rejection_sample(
    target_logits: torch.Tensor,  # [K+1, V]
    draft_logits: torch.Tensor,   # [K, V]
    draft_tokens: torch.Tensor,   # [K]
    params: SamplingParams,
    generator: torch.Generator,
) -> torch.Tensor:
    """One chain: the emitted tokens [1..K+1] (accepted draft tokens, then recovered or bonus)."""
    out, num_accepted = rejection_sample_batch(target_logits[None], draft_logits[None],
                                               draft_tokens[None], params, generator)
    return out[0, : int(num_accepted[0]) + 1]
