"""A one-pass CUDA sampler for K=0 steps without top-k/top-p/min-p: Gumbel-max over the logits.

A plain sample of p = softmax(logits / T) is argmax_v (logits_v / T + G_v) with G_v = −log(−log U_v),
U_v ~ U[0, 1) i.i.d. (the Gumbel-max trick; the same law as ``verify._race``'s argmax p_v / E_v, since
−log E_v is Gumbel). Greedy rows (T < 1e-6 or top_k = 1, SGLang's rule) take argmax_v logits_v.

``verify.sample_tokens`` built this from ~8 torch kernels, each a pass over the [B, V] fp32 logits (softmax,
exponential noise, clamp, divide, two argmaxes); at bs 256–511 of an 8B model on the H200 (V = 151,936,
~0.24 GB of logits) that is ~0.8 ms per step by an estimate of its memory passes, and ours' K=0 steps
measured 3.7–4.6% slower than plain SGLang's there (``results/issue5_bench_rollout_8b_h200_run6.json``,
2026-11-26). Here one Triton kernel reads the logits once and draws U from Philox in registers; when the
batch is too small to fill the GPU, each row is split into chunks whose (score, index) pairs a second small
kernel reduces.

Status: opt-in (``ER_VERL_K0_SAMPLER=gumbel``), not verified on the GPU. Its first GPU test run (2026-11-26,
results/logs/issue5_k0_sampler_2026-11-26/) failed all three tests. The two distribution tests measured total
variation over 151,936 bins that mostly hold no sample, which fails for any sampler (fixed: the tail now
holds ~1e-9 of the mass; checked on CPU with torch.multinomial draws in the kernel's place: p = 0.96,
TV 0.010). Why the CPU interpreter probe failed on the host was not captured. No device time was left to
rerun them. That the sampler causes ours' 3.7-4.6% slower K=0 steps at bs 256-511 is a hypothesis (an
estimate of its passes), not a measurement.

Randomness: the Philox key of a call is drawn from the caller's ``torch.Generator`` (its offset is advanced
on the host, no synchronisation), so a seeded engine samples deterministically. Not for CUDA-graph capture.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from er_verl.engine.verify import GREEDY_EPS  # SGLang's greedy rule: T below it (or top_k = 1)

BLOCK = 2048        # vocab entries per loop step of a program
TARGET_PROGRAMS = 528  # 4 per SM of an H200: below this many rows, rows are split into chunks


@triton.jit
def _chunk_argmax(logits_ptr, stride, temperature_ptr, top_k_ptr, score_ptr, index_ptr, greedy_ptr,
                  vocab, chunk_len, num_chunks, seed, greedy_eps, BLOCK: tl.constexpr):
    """Program (row, chunk): the best Gumbel score and its index, and the largest logit and its index, over
    the chunk's vocab entries, written to [row, chunk] of score/index (sampled) and greedy (index only)."""
    row, chunk = tl.program_id(0), tl.program_id(1)
    t = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    is_greedy = (t < greedy_eps) | (top_k == 1)
    inv_t = 1.0 / tl.where(is_greedy, 1.0, t)
    best_s = tl.full((), -float("inf"), tl.float32)
    best_x = tl.full((), -float("inf"), tl.float32)
    best_i = tl.zeros((), tl.int32)
    best_xi = tl.zeros((), tl.int32)
    start = chunk * chunk_len
    for off in range(0, chunk_len, BLOCK):
        cols = start + off + tl.arange(0, BLOCK)
        live = (cols < vocab) & (off + tl.arange(0, BLOCK) < chunk_len)
        x = tl.load(logits_ptr + row * stride + cols, mask=live, other=-float("inf")).to(tl.float32)
        u = tl.rand(seed, row * vocab + cols)
        s = tl.where(live, x * inv_t - tl.log(-tl.log(u)), -float("inf"))  # u = 0 gives -inf: never drawn
        m = tl.max(s, 0)
        i = tl.argmax(s, 0)
        take = m > best_s  # strict: the earlier index keeps a tie
        best_i = tl.where(take, start + off + i, best_i)
        best_s = tl.where(take, m, best_s)
        mx = tl.max(x, 0)
        ix = tl.argmax(x, 0)
        take_x = mx > best_x
        best_xi = tl.where(take_x, start + off + ix, best_xi)
        best_x = tl.where(take_x, mx, best_x)
    slot = row * num_chunks + chunk
    tl.store(score_ptr + slot, best_s)
    tl.store(index_ptr + slot, tl.where(is_greedy, best_xi, best_i))
    tl.store(greedy_ptr + slot, best_x)


@triton.jit
def _reduce_chunks(score_ptr, index_ptr, greedy_ptr, temperature_ptr, top_k_ptr, out_ptr, num_chunks,
                   greedy_eps, CHUNKS: tl.constexpr):
    """Program row: the chunk with the best score (sampled) or the largest logit (greedy); its index."""
    row = tl.program_id(0)
    c = tl.arange(0, CHUNKS)
    live = c < num_chunks
    t = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    is_greedy = (t < greedy_eps) | (top_k == 1)
    score = tl.load(score_ptr + row * num_chunks + c, mask=live, other=-float("inf"))
    x = tl.load(greedy_ptr + row * num_chunks + c, mask=live, other=-float("inf"))
    key = tl.where(is_greedy, x, score)
    best = tl.argmax(key, 0)
    tl.store(out_ptr + row, tl.load(index_ptr + row * num_chunks + best).to(tl.int64))


def philox_seed(gen: torch.Generator, draws: int) -> int:
    """A 31-bit Philox key for one call from ``gen``. A CUDA generator's state is (seed, offset): the key mixes
    them and the offset is advanced by ``draws`` on the host (no device synchronisation, the same state gives
    the same key). A CPU generator (tests, Triton's interpreter) draws the key."""
    if gen.device.type != "cuda":
        return int(torch.randint(1, 2**31 - 1, (1,), generator=gen))
    seed, offset = (int(v) for v in gen.get_state().view(torch.int64)[:2])
    gen.set_state(torch.tensor([seed, offset + draws], dtype=torch.int64).view(torch.uint8))
    return (seed * 0x9E3779B1 + offset) % (2**31 - 1)


def num_chunks(batch: int, vocab: int) -> int:
    """Chunks per row: enough programs to fill the GPU (TARGET_PROGRAMS), each at least BLOCK entries."""
    if batch >= TARGET_PROGRAMS:
        return 1
    return max(1, min(-(-TARGET_PROGRAMS // batch), -(-vocab // BLOCK)))


def sample_tokens(logits: torch.Tensor,       # [B, V] fp32 or bf16, CUDA, rows contiguous
                  temperature: torch.Tensor,  # [B] float
                  top_k: torch.Tensor,        # [B] int (only top_k == 1 is read: greedy)
                  gen: torch.Generator,       # CUDA generator; advanced on the host
                  ) -> torch.Tensor:          # [B] int64
    """One draw per row from softmax(logits / T), argmax for greedy rows; no top-k/top-p/min-p filtering."""
    batch, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    chunks = num_chunks(batch, vocab)
    chunk_len = -(-vocab // chunks)
    dev = logits.device
    score = torch.empty(batch * chunks, dtype=torch.float32, device=dev)
    index = torch.empty(batch * chunks, dtype=torch.int32, device=dev)
    greedy = torch.empty(batch * chunks, dtype=torch.float32, device=dev)
    seed = philox_seed(gen, batch * vocab)
    temperature = temperature.reshape(-1)
    top_k = top_k.reshape(-1)
    _chunk_argmax[(batch, chunks)](logits, logits.stride(0), temperature, top_k, score, index, greedy,
                                   vocab, chunk_len, chunks, seed, GREEDY_EPS, BLOCK=BLOCK)
    out = torch.empty(batch, dtype=torch.int64, device=dev)
    _reduce_chunks[(batch,)](score, index, greedy, temperature, top_k, out, chunks, GREEDY_EPS,
                             CHUNKS=triton.next_power_of_2(chunks))
    return out
