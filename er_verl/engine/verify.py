"""The engine's exact sampler for one speculative round: batched, pure torch, graph-safe.

Notation (Leviathan et al. 2023, arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318), as in
`er_verl.control.rejection`, the float64 CPU specification this module is tested against:
p_i = the target's filtered distribution at position i, q_i = the distribution the drafter sampled
draft token x_i from, K_b = request b's draft length (0..Kmax, ragged by masking). One round:

- x_i is *accepted* iff u_i · q_i(x_i) < p_i(x_i), u_i ~ U[0, 1), i.e. with probability
  min(1, p_i(x_i) / q_i(x_i)), while every earlier x was accepted and i < K_b;
- at the first rejection j < K_b, a *recovered* token is drawn from norm(max(0, p_j − q_j));
- when all K_b are accepted, a *bonus* token is drawn from p_{K_b} (K_b = 0: a plain sample of p_0).

Each round emits num_accepted + 1 tokens (1..K_b+1), each with exactly the target's distribution.
Greedy requests (temperature < 1e-6 or top_k = 1) have p_i = one-hot(argmax): a draft token is
accepted iff it is the target's argmax, and the recovered/bonus token is that argmax, which is
exactly what plain greedy decoding emits.

Filtering reproduces SGLang 0.5.14's non-speculative sampler (`sglang/srt/layers/sampler.py`):
probs = softmax(logits / T); without min-p anywhere in the batch, top-k and top-p act jointly on
those probs (flashinfer `filter_apply_order="joint"`, sampler.py:245-250); when any request in the
batch sets min-p, every row goes top-k → renormalise → top-p → min-p (sampler.py:238-243, a
batch-wide switch on `need_min_p_sampling`). Draws use the exponential race: argmax_v w(v) / E_v
with E_v ~ Exp(1) i.i.d. picks v with probability w(v) / Σ w, so weights need no normalisation.

Graph safety: no host synchronisation (.item(), .tolist(), nonzero, torch.multinomial), no
data-dependent shapes, no Python branch on tensor values; batch-wide switches are 0-dim device
tensors used in torch.where. Only host-side choices change the captured graph: `need_filter` (a
bool the caller knows, like SGLang's `need_top_k_sampling`) and whether `noise` is a tensor or a
generator (under CUDA graphs, register the generator's state with the graph).
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "filter_probs", "draft_sample", "sample_tokens", "sample_round", "target_logprobs",
    "FORCE_ACCEPT_ENV", "forced_accept_alpha", "sample_round_forced",
]

GREEDY_EPS = 1e-6  # sglang/srt/sampling/sampling_params.py:144: T below this means greedy


def _is_greedy(temperature: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """[N] bool: SGLang rewrites T < 1e-6 to (T=1, top_k=1); top_k = 1 is greedy."""
    return (temperature < GREEDY_EPS) | (top_k == 1)


def filter_probs(
    logits: torch.Tensor,       # [N, V] fp32 or bf16
    temperature: torch.Tensor,  # [N] float
    top_k: torch.Tensor,        # [N] int; < 1 (SGLang's -1) or >= V disables
    top_p: torch.Tensor,        # [N] float in (0, 1]; 1 disables
    min_p: torch.Tensor,        # [N] float in [0, 1]; 0 disables
    need_filter: bool = True,   # False: no row sets top-k/top-p/min-p (skips the sort)
) -> torch.Tensor:
    """The distribution SGLang samples each row from, [N, V] fp32 (rows sum to 1).

    Per-row port of `rejection.filter_probs`; the joint-vs-sequential order is batch-wide.
    """
    greedy = _is_greedy(temperature, top_k)                                    # [N]
    t = torch.where(greedy, torch.ones_like(temperature), temperature).float()
    probs = torch.softmax(logits.float() / t[:, None], dim=-1)                 # [N, V]
    if need_filter:
        probs = _top_k_top_p_min_p(probs, top_k, top_p, min_p)
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(probs.dtype)
    return torch.where(greedy[:, None], one_hot, probs)


def _top_k_top_p_min_p(probs, top_k, top_p, min_p):
    """probs [N, V] → filtered and renormalised [N, V]; see `rejection.filter_probs`."""
    vocab = probs.shape[-1]
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)     # [N, V]
    rank = torch.arange(vocab, device=probs.device)
    k = torch.where(top_k < 1, torch.full_like(top_k, vocab), top_k)
    kept = sorted_probs * (rank < k[:, None])
    sequential = (min_p > 0).any()                                             # [] batch-wide
    kept = torch.where(sequential, kept / kept.sum(-1, keepdim=True), kept)
    ranked = torch.where(sequential, kept, sorted_probs)
    in_top_p = (ranked.cumsum(-1) - ranked < top_p[:, None]) | (top_p[:, None] >= 1.0)
    kept = kept * in_top_p
    kept = kept * (kept >= min_p[:, None] * kept[:, :1])
    kept = kept / kept.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, order, kept)


def _exponentials(like: torch.Tensor, noise: torch.Tensor | torch.Generator) -> torch.Tensor:
    """E ~ Exp(1) shaped like `like` [N, V]: the given noise, or drawn from the generator."""
    if isinstance(noise, torch.Generator):
        return torch.empty_like(like, dtype=torch.float32).exponential_(generator=noise)
    return noise


def _race(weights: torch.Tensor, noise: torch.Tensor | torch.Generator) -> torch.Tensor:
    """One draw per row from norm(weights) [N, V] (weights >= 0, some > 0): argmax w / E, [N]."""
    e = _exponentials(weights, noise).float().clamp_min(torch.finfo(torch.float32).tiny)
    return (weights.float() / e).argmax(-1)


def draft_sample(
    draft_logits: torch.Tensor,              # [B, V]
    temperature: torch.Tensor,               # [B]
    top_k: torch.Tensor,                     # [B] int
    top_p: torch.Tensor,                     # [B]
    min_p: torch.Tensor,                     # [B]
    noise: torch.Tensor | torch.Generator,   # [B, V] Exp(1) noise, or a generator to draw it
    need_filter: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One drafter step: (tokens [B] int64, q [B, V] fp32), tokens ~ q, q filtered like p.

    Greedy rows get q = one-hot(argmax) and that token (not a sample of softmax(l): seams
    pitfall 20), so a greedy round accepts exactly while the drafter agrees with the target.
    """
    q = filter_probs(draft_logits, temperature, top_k, top_p, min_p, need_filter)
    return _race(q, noise), q


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor, noise: torch.Tensor | torch.Generator, need_filter: bool = True) -> torch.Tensor:
    """Tokens [B] int64 only (arguments as :func:`draft_sample`'s), equal to ``draft_sample(...)[0]`` for the same
    noise (the same draw from the same generator state), with fewer eager ops when no row filters: no q is
    returned, so no one-hot over V is built; a greedy row's token is argmax(logits), which is what the race over
    its one-hot q picks."""
    if need_filter:
        return draft_sample(logits, temperature, top_k, top_p, min_p, noise, need_filter)[0]
    greedy = _is_greedy(temperature, top_k)                                      # [B]
    t = torch.where(greedy, 1.0, temperature).float()
    sampled = _race(torch.softmax(logits.float() / t[:, None], dim=-1), noise)   # [B]
    return torch.where(greedy, logits.argmax(-1), sampled)


def sample_round(
    target_logits: torch.Tensor,             # [B, Kmax+1, V] fp32/bf16: rows 0..K_b are valid
    draft_probs: torch.Tensor,               # [B, Kmax, V] fp32: q_i, as the drafter sampled
    draft_tokens: torch.Tensor,              # [B, Kmax] int64: x_i; ignored from K_b on
    num_draft: torch.Tensor,                 # [B] int: K_b in 0..Kmax
    temperature: torch.Tensor,               # [B]
    top_k: torch.Tensor,                     # [B] int
    top_p: torch.Tensor,                     # [B]
    min_p: torch.Tensor,                     # [B]
    uniforms: torch.Tensor,                  # [B, >= Kmax] fp32 U[0,1): u_i (extra cols unused)
    noise: torch.Tensor | torch.Generator,   # [B, V] Exp(1) for the recovered/bonus draw
    need_filter: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One verify round: (output_tokens [B, Kmax+1] int64 −1-padded, num_emitted [B],
    num_accepted [B]), num_emitted = num_accepted + 1 in 1..K_b+1 (int64).

    output_tokens[b] = accepted x_0..x_{n-1}, then the recovered or bonus token at n, then −1.
    """
    batch, k_plus_1, vocab = target_logits.shape
    per_pos = [x[:, None].expand(batch, k_plus_1).reshape(-1)
               for x in (temperature, top_k, top_p, min_p)]
    p = filter_probs(target_logits.reshape(-1, vocab), *per_pos, need_filter)
    p = p.view(batch, k_plus_1, vocab)                                         # [B, Kmax+1, V]
    num_draft = num_draft.to(device=p.device, dtype=torch.int64)
    num_accepted = _count_accepted(p, draft_probs, draft_tokens, num_draft, uniforms)
    last = _race(_final_weights(p, draft_probs, num_accepted, num_draft), noise)  # [B]
    return _assemble(draft_tokens, num_accepted, last), num_accepted + 1, num_accepted


def _count_accepted(p, q, tokens, num_draft, uniforms):
    """Length of the accepted prefix, [B]: u_i · q_i(x_i) < p_i(x_i) for all i < n <= K_b."""
    kmax = q.shape[1]
    x = tokens.clamp_min(0)[..., None]                                          # [B, Kmax, 1]
    p_x = p[:, :kmax].gather(-1, x).squeeze(-1)                                 # [B, Kmax]
    q_x = q.gather(-1, x).squeeze(-1).float()                                   # [B, Kmax]
    in_range = torch.arange(kmax, device=p.device) < num_draft[:, None]         # [B, Kmax]
    accepted = (uniforms[:, :kmax].float() * q_x < p_x) & in_range
    return accepted.to(torch.int64).cumprod(-1).sum(-1)


def _residual(p_j: torch.Tensor, q_j: torch.Tensor) -> torch.Tensor:
    """max(0, p_j − q_j), [B, V], unnormalised (the race normalises)."""
    return (p_j - q_j).clamp_min(0.0)


def _final_weights(p, q, num_accepted, num_draft):
    """Row b: residual at the first rejection j = num_accepted[b] < K_b, else p_{K_b}; [B, V].
    Falls back to p_j where the residual has no mass (p_j = q_j, which rejects with prob 0)."""
    kmax, vocab = q.shape[1], p.shape[-1]
    index = num_accepted[:, None, None].expand(-1, 1, vocab)                   # [B, 1, V]
    p_j = p.gather(1, index).squeeze(1)                                        # [B, V]
    if kmax == 0:
        return p_j
    q_j = q.gather(1, index.clamp_max(kmax - 1)).squeeze(1).float()            # [B, V]
    residual = _residual(p_j, q_j)
    use_residual = (num_accepted < num_draft) & (residual.sum(-1) > 0)         # [B]
    return torch.where(use_residual[:, None], residual, p_j)


def _assemble(draft_tokens, num_accepted, last):
    """[B, Kmax+1]: draft tokens before num_accepted, `last` at it, −1 after."""
    pad = draft_tokens.new_full((draft_tokens.shape[0], 1), -1)
    tokens = torch.cat([draft_tokens, pad], dim=1).to(torch.int64)             # [B, Kmax+1]
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
    n = num_accepted[:, None]
    tokens = torch.where(pos < n, tokens, -1)
    return torch.where(pos == n, last[:, None], tokens)


def target_logprobs(
    target_logits: torch.Tensor,         # [B, Kmax+1, V]
    tokens: torch.Tensor,                # [B, Kmax+1] int64, −1-padded (sample_round's output)
    temperature: torch.Tensor,           # [B]
    top_k: torch.Tensor | None = None,   # [B] int; given, an all-greedy batch uses T = 1
) -> torch.Tensor:
    """log p_target(token), [B, Kmax+1] fp32; 0.0 at padding.

    SGLang's semantics: log_softmax(logits / T) of the *unfiltered* distribution, clamped at
    finfo.min. Non-speculative: sampler.py:180-194 (log of softmax(logits / T), taken before
    top-k/top-p/min-p filtering) and :121-132 (all-greedy batch: log_softmax(logits)); spec v2:
    layers/utils/logprob.py:315-326 (`compute_spec_v2_logprobs`), same rule. Greedy requests
    carry T = 1 (sampling_params.py:144-147). Being unfiltered, the logprob of every token is
    finite, whatever top-k/top-p/min-p removed.
    """
    t = torch.where(temperature < GREEDY_EPS, torch.ones_like(temperature), temperature)
    if top_k is not None:
        all_greedy = _is_greedy(temperature, top_k).all()                      # [] batch-wide
        t = torch.where(all_greedy, torch.ones_like(t), t)
    logprobs = torch.log_softmax(target_logits.float() / t.float()[:, None, None], dim=-1)
    logprobs = logprobs.clamp_min(torch.finfo(logprobs.dtype).min)
    picked = logprobs.gather(-1, tokens.clamp_min(0)[..., None]).squeeze(-1)   # [B, Kmax+1]
    return torch.where(tokens >= 0, picked, torch.zeros_like(picked))


# ---------------------------------------------------------------- systems-measurement knob (NOT exact)

FORCE_ACCEPT_ENV = "ER_VERL_FORCE_ACCEPT"


def forced_accept_alpha(environ=os.environ) -> float | None:
    """α from ``ER_VERL_FORCE_ACCEPT`` (a float in [0, 1]), or None when unset/empty (the default).

    Raises ValueError with a sentence for anything else. Only for systems measurements with
    random-weight models: the tokens it emits do NOT follow the target's distribution.
    """
    raw = environ.get(FORCE_ACCEPT_ENV, "").strip()
    if not raw:
        return None
    try:
        alpha = float(raw)
    except ValueError:
        alpha = float("nan")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{FORCE_ACCEPT_ENV}={raw!r}: expected a probability in [0, 1] (or unset for exact sampling)")
    return alpha


def sample_round_forced(
    alpha: float,                            # per-token forced acceptance probability
    target_logits: torch.Tensor,             # [B, Kmax+1, V]
    draft_tokens: torch.Tensor,              # [B, Kmax] int64
    num_draft: torch.Tensor,                 # [B] int: K_b
    temperature: torch.Tensor,               # [B]
    top_k: torch.Tensor,                     # [B] int
    top_p: torch.Tensor,                     # [B]
    min_p: torch.Tensor,                     # [B]
    uniforms: torch.Tensor,                  # [B, >= Kmax] U[0,1)
    noise: torch.Tensor | torch.Generator,   # [B, V] Exp(1), or a generator
    need_filter: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NOT EXACT. ``sample_round``'s outputs with x_i accepted iff u_i < α (whatever p and q say).

    The token after the accepted prefix is drawn from p at that position (no residual), so the
    round emits 1..K_b+1 tokens with E = (1 − α^(K+1)) / (1 − α) at K_b = K: the step cost of a
    speculative round at a chosen acceptance, for random-weight models that accept nothing.
    """
    batch, k_plus_1, vocab = target_logits.shape
    kmax = k_plus_1 - 1
    num_draft = num_draft.to(device=target_logits.device, dtype=torch.int64)
    in_range = torch.arange(kmax, device=target_logits.device) < num_draft[:, None]   # [B, Kmax]
    accepted = (uniforms[:, :kmax].float() < alpha) & in_range
    num_accepted = accepted.to(torch.int64).cumprod(-1).sum(-1)                         # [B]
    index = num_accepted[:, None, None].expand(-1, 1, vocab)
    logits_n = target_logits.gather(1, index).squeeze(1)                                # [B, V]
    p_n = filter_probs(logits_n, temperature, top_k, top_p, min_p, need_filter)
    last = _race(p_n, noise)
    return _assemble(draft_tokens, num_accepted, last), num_accepted + 1, num_accepted
