"""A draft step that reads a window of the shared KV cache (``EfficientConfig.draft_kv_window``).

Why: at long contexts a decode step's attention reads every cached K/V of every request, and the int4
drafter reads exactly as much of it as the target does (the KV cache is shared and bf16). Qwen3-8B stores
147 KB of K/V per token (36 layers × 8 KV heads × 128 × 2 × 2 bytes), so by arithmetic a batch of 29 requests
at ~3.5k tokens reads ~15 GB per step, ~3.7 ms at 4 TB/s, whatever the weights cost. In the issue-5 rollout
(H200, 8B, 2026-11-26, run 13) the corrected cost model put a draft step at 0.83–0.94 of a plain step at
bs 23–36: the tail of a long rollout is where speculation should pay, and there a draft step saved little.
With a window of 512 (run 14) it was 0.63 of a plain step at bs 29.

What: with a window W > 0 each draft step attends to the first ``SINKS`` positions of its request (the
attention sinks of StreamingLLM) and its last W positions; the target's verify pass still attends to
everything. MagicDec (Chen et al., 2024) and TriForce (Sun et al., 2024) draft the same way. The output
distribution stays the target's: rejection sampling corrects any draft distribution q, and the q it uses is
the one the windowed drafter sampled from. Only acceptance can change, and it is not measured here: a
random-weight model accepts nothing, and the quickstart's answers are shorter than any window. So the
default is 0 (the whole context).

How: the drafter's runner has its own FlashInfer attention backend (its decode graphs read that backend's
buffers). Its decode index updater is wrapped so that a step plans over min(L, SINKS + W) positions per
request, builds the window's slot indices with SGLang's own kernel (``kv_start_idx`` = L − that length, as
for sliding-window layers), and then writes the sinks' slots over the first SINKS entries of each request.
Positions keep their absolute RoPE rotations (K is stored rotated; q is rotated at its true position). The
target's backends (verify, and the K=0 graphs) are separate objects and are not touched.
"""

from __future__ import annotations

import torch

from er_verl.config import MIN_DRAFT_KV_WINDOW as MIN_WINDOW

SINKS = 4  # StreamingLLM's sink count: the first positions of every request stay visible to the drafter


def window_lengths(seq_lens: torch.Tensor, window: int) -> torch.Tensor:
    """Positions each request's draft step attends to: min(L, SINKS + window)."""
    return torch.clamp(seq_lens, max=SINKS + window)


def write_sinks(kv_indices: torch.Tensor, kv_indptr: torch.Tensor, req_to_token: torch.Tensor,
                req_pool_indices: torch.Tensor, lengths: torch.Tensor) -> None:
    """Entry ``kv_indptr[i] + j`` := slot of position j of request i, for j < min(SINKS, lengths[i]).

    ``kv_indices`` holds, per request, the slots of its last ``lengths[i]`` positions. Where L > lengths[i]
    the first SINKS of them become the sinks; where L <= lengths[i] the window starts at position 0 and the
    write leaves the same values. No host sync (graph-capturable shapes); every request has L >= 1.
    """
    bs = req_pool_indices.shape[0]
    if bs == 0:
        return
    j = torch.arange(SINKS, device=kv_indices.device)
    jj = torch.minimum(j[None, :], (lengths[:bs, None] - 1).clamp(min=0))  # [bs, SINKS]; repeats write equal values
    dst = kv_indptr[:bs, None].to(torch.int64) + jj
    src = req_to_token[req_pool_indices.to(torch.int64)[:, None], jj]
    kv_indices[dst.reshape(-1)] = src.reshape(-1).to(kv_indices.dtype)


class WindowedDecodeUpdate:
    """Replaces ``FlashInferIndicesUpdaterDecode.update`` of the drafter's backend (single-wrapper dispatch)."""

    def __init__(self, updater, window: int):
        if window < MIN_WINDOW:
            raise ValueError(f"draft_kv_window {window!r} is invalid: allowed is 0 (off) or >= {MIN_WINDOW}.")
        self.updater, self.window, self.calls = updater, window, 0

    def __call__(self, req_pool_indices, seq_lens, seq_lens_cpu, seq_lens_sum, decode_wrappers=None,
                 encoder_lens=None, spec_info=None, fixed_split_size=None, disable_split_kv=None):
        up = self.updater
        wrapper = (decode_wrappers or up.decode_wrappers)[0]
        lengths = window_lengths(seq_lens, self.window)
        if seq_lens_cpu is not None:
            lengths_cpu = window_lengths(seq_lens_cpu, self.window)
            total = int(lengths_cpu.sum())
        else:  # an upper bound is enough: it only sizes an eager step's index buffer
            bound = len(req_pool_indices) * (SINKS + self.window)
            lengths_cpu, total = None, bound if seq_lens_sum is None else min(int(seq_lens_sum), bound)
        up.call_begin_forward(wrapper, req_pool_indices, lengths, total, up.kv_indptr[0], seq_lens - lengths,
                              spec_info, lengths_cpu, fixed_split_size=fixed_split_size,
                              disable_split_kv=disable_split_kv)
        write_sinks(wrapper._paged_kv_indices_buf, up.kv_indptr[0], up.req_to_token, req_pool_indices, lengths)
        self.calls += 1


def install(attn_backend, window: int) -> str | None:
    """Wrap the drafter backend's decode index updater; returns None, or why it was not installed."""
    if window == 0:
        return None
    updater = getattr(attn_backend, "indices_updater_decode", None)
    if updater is None or not hasattr(updater, "call_begin_forward"):
        return f"the drafter's attention backend {type(attn_backend).__name__} is not FlashInfer's"
    if getattr(attn_backend, "num_wrappers", 1) != 1:
        return "the model has sliding-window or cross-attention layers (two FlashInfer wrappers)"
    updater.update = WindowedDecodeUpdate(updater, window)
    return None
