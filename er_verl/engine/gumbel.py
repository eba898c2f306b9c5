"""A one-pass CUDA sampler for K=0 steps without top-k/top-p/min-p: Gumbel-max over the logits.

A plain sample of p = softmax(logits / T) is argmax_v (logits_v / T + G_v) with G_v = −log(−log U_v),
U_v ~ U[0, 1) i.i.d. (the Gumbel-max trick; the same law as ``verify._race``'s argmax p_v / E_v, since
−log E_v is Gumbel). Greedy rows (T < 1e-6 or top_k = 1, SGLang's rule) take argmax_v logits_v.

``verify.sample_tokens`` builds this from ~8 torch kernels, each a pass over the [B, V] fp32 logits (softmax,
exponential noise, clamp, divide, two argmaxes). Here a program per (row, block of BLOCK vocab entries) reads
its logits once and draws U from Philox in registers (four uniforms per Philox call), and a second small
kernel picks each row's best block. No loop runs over a runtime bound (Triton's interpreter on the GPU host,
numpy 2.4, cannot take one).

Status: opt-in (``ER_VERL_K0_SAMPLER=gumbel``), off by default. On the H200 (2026-11-26) it passed its GPU tests
and took 0.36 ms at bs 400 against the torch sampler's 1.08 ms (``results/k0_sampler_cost_h200.json``), but a
gate-mode rollout with it was not faster: its bs 256-511 steps had the torch sampler's median and 231 steps over
40 ms, cause not found (``results/issue5_bench_rollout_8b_h200_gumbel.json``).

Randomness: the Philox key of a call is drawn from the caller's ``torch.Generator`` (its offset is advanced
on the host, no synchronisation), so a seeded engine samples deterministically. Not for CUDA-graph capture.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from er_verl.engine.verify import GREEDY_EPS  # SGLang's greedy rule: T below it (or top_k = 1)

BLOCK = 2048  # vocab entries per program (a multiple of 4: one Philox call gives four uniforms, so a
# program draws its block as four quarters); a row of V entries is cdiv(V, BLOCK) programs


@triton.jit
def _fold(row_ptr, start, lane, vocab, u, inv_t, best_s, best_i, best_x, best_xi):
    """Fold the logits at vocab indices start + lane (uniforms u) into the running best Gumbel score and
    largest logit, with their indices; strict comparisons keep the earlier index on a tie."""
    cols = start + lane
    x = tl.load(row_ptr + cols, mask=cols < vocab, other=-float("inf")).to(tl.float32)
    s = x * inv_t - tl.log(-tl.log(u))  # u = 0 gives -inf: never drawn; masked lanes hold x = -inf
    m = tl.max(s, 0)
    take = m > best_s
    best_i = tl.where(take, start + tl.argmax(s, 0), best_i)
    best_s = tl.where(take, m, best_s)
    mx = tl.max(x, 0)
    take_x = mx > best_x
    best_xi = tl.where(take_x, start + tl.argmax(x, 0), best_xi)
    best_x = tl.where(take_x, mx, best_x)
    return best_s, best_i, best_x, best_xi


@triton.jit
def _block_argmax(logits_ptr, stride, temperature_ptr, top_k_ptr, score_ptr, index_ptr, greedy_ptr,
                  vocab, num_blocks, seed, greedy_eps, QUARTER: tl.constexpr):
    """Program (row, block): the best Gumbel score and its index (the largest logit's index for a greedy row)
    and the largest logit over the block's 4 * QUARTER vocab entries, written to slot [row, block]."""
    row, block = tl.program_id(0), tl.program_id(1)
    t = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    is_greedy = (t < greedy_eps) | (top_k == 1)
    inv_t = 1.0 / tl.where(is_greedy, 1.0, t)
    lane = tl.arange(0, QUARTER)
    # one Philox counter per (row, block, lane): row * vocab + block * QUARTER + lane < (row + 1) * vocab
    u0, u1, u2, u3 = tl.rand4x(seed, row * vocab + block * QUARTER + lane)
    best_s = tl.full((), -float("inf"), tl.float32)
    best_x = tl.full((), -float("inf"), tl.float32)
    best_i = tl.zeros((), tl.int32)
    best_xi = tl.zeros((), tl.int32)
    base = block * 4 * QUARTER
    row_ptr = logits_ptr + row * stride
    best_s, best_i, best_x, best_xi = _fold(row_ptr, base, lane, vocab, u0, inv_t,
                                            best_s, best_i, best_x, best_xi)
    best_s, best_i, best_x, best_xi = _fold(row_ptr, base + 1 * QUARTER, lane, vocab, u1, inv_t,
                                            best_s, best_i, best_x, best_xi)
    best_s, best_i, best_x, best_xi = _fold(row_ptr, base + 2 * QUARTER, lane, vocab, u2, inv_t,
                                            best_s, best_i, best_x, best_xi)
    best_s, best_i, best_x, best_xi = _fold(row_ptr, base + 3 * QUARTER, lane, vocab, u3, inv_t,
                                            best_s, best_i, best_x, best_xi)
    slot = row * num_blocks + block
    tl.store(score_ptr + slot, best_s)
    tl.store(index_ptr + slot, tl.where(is_greedy, best_xi, best_i))
    tl.store(greedy_ptr + slot, best_x)


@triton.jit
def _reduce_blocks(score_ptr, index_ptr, greedy_ptr, temperature_ptr, top_k_ptr, out_ptr, num_blocks,
                   greedy_eps, BLOCKS: tl.constexpr):
    """Program row: the block with the best score (sampled) or the largest logit (greedy); its index."""
    row = tl.program_id(0)
    c = tl.arange(0, BLOCKS)
    live = c < num_blocks
    t = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    is_greedy = (t < greedy_eps) | (top_k == 1)
    score = tl.load(score_ptr + row * num_blocks + c, mask=live, other=-float("inf"))
    x = tl.load(greedy_ptr + row * num_blocks + c, mask=live, other=-float("inf"))
    key = tl.where(is_greedy, x, score)
    best = tl.argmax(key, 0)
    tl.store(out_ptr + row, tl.load(index_ptr + row * num_blocks + best).to(tl.int64))


def philox_seed(gen: torch.Generator, draws: int) -> int:
    """A 31-bit Philox key for one call from ``gen``. A CUDA generator's state is (seed, offset): the key mixes
    them and the offset is advanced by ``draws`` on the host (no device synchronisation, the same state gives
    the same key). A CPU generator (tests, Triton's interpreter) draws the key."""
    if gen.device.type != "cuda":
        return int(torch.randint(1, 2**31 - 1, (1,), generator=gen))
    seed, offset = (int(v) for v in gen.get_state().view(torch.int64)[:2])
    gen.set_state(torch.tensor([seed, offset + draws], dtype=torch.int64).view(torch.uint8))
    return (seed * 0x9E3779B1 + offset) % (2**31 - 1)


def sample_tokens(logits: torch.Tensor,       # [B, V] fp32 or bf16, CUDA, rows contiguous
                  temperature: torch.Tensor,  # [B] float
                  top_k: torch.Tensor,        # [B] int (only top_k == 1 is read: greedy)
                  gen: torch.Generator,       # CUDA generator; advanced on the host
                  ) -> torch.Tensor:          # [B] int64
    """One draw per row from softmax(logits / T), argmax for greedy rows; no top-k/top-p/min-p filtering."""
    batch, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    blocks = triton.cdiv(vocab, BLOCK)
    dev = logits.device
    score = torch.empty(batch * blocks, dtype=torch.float32, device=dev)
    index = torch.empty(batch * blocks, dtype=torch.int32, device=dev)
    greedy = torch.empty(batch * blocks, dtype=torch.float32, device=dev)
    seed = philox_seed(gen, batch * vocab)
    temperature = temperature.reshape(-1)
    top_k = top_k.reshape(-1)
    _block_argmax[(batch, blocks)](logits, logits.stride(0), temperature, top_k, score, index, greedy,
                                   vocab, blocks, seed, GREEDY_EPS, QUARTER=BLOCK // 4)
    out = torch.empty(batch, dtype=torch.int64, device=dev)
    _reduce_blocks[(batch,)](score, index, greedy, temperature, top_k, out, blocks, GREEDY_EPS,
                             BLOCKS=triton.next_power_of_2(blocks))
    return out
