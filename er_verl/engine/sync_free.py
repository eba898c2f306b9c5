"""Speculative rounds whose host preparation overlaps the previous round (``draft_kv_window``, or triton drafts).

Why (H200, 8B, bs 31, 3.5k-token contexts, K=1, torch.profiler; ``results/logs/issue5_sync_free_2026-11-26/``):
SGLang's overlap scheduler plans FlashInfer from host-side lengths. A K>0 round's new lengths depend on its
acceptance, so they are published after its sampling, and ``FutureMap.resolve_seq_lens_cpu`` blocks the host on
that publish before it prepares the next batch (10.7 ms of ``cudaStreamSynchronize`` per round). The host then
needs ~2 ms of scheduling and ~1.7 ms to prepare and launch the first draft step, all with the GPU idle:
~3.7 ms of a 22 ms round. K=0 steps publish before they run and do not stall.

What: when every request of a batch is already longer than the draft window (``SINKS + W`` positions), a
windowed draft step attends to exactly ``SINKS + W`` positions per request whatever its true length, so its
FlashInfer plan needs no fresh host lengths (``draft_window``). For such a batch the resolve hook
(:func:`resolve_around`) skips the host wait: it does the GPU side of SGLang's resolve (the schedule stream waits
for the publish; ``seq_lens`` gathered on the device), leaves the previous host lengths in ``seq_lens_cpu`` (a lower
bound: lengths only grow), and queues a copy of the new lengths to pinned host memory (:class:`LengthFetch`). The
round launches its draft steps from the lower bound, then waits for that copy (by then the GPU is busy drafting)
and plans its verify pass from the exact lengths as before. Both plans therefore equal the synchronous path's, and
the sampled tokens have the same distribution.

Full-context drafts (no window) take the same path when the draft runner's attention backend is SGLang's triton
backend (``EfficientConfig.draft_attention="triton"``): its CUDA-graph replay builds the KV indices and the
decode split from the device lengths and never reads ``seq_lens_cpu`` (``needs_cpu_seq_lens`` False).

Only batches that run a K>0 round replayed in CUDA graphs take this path (an eager step would size its index buffer
from ``seq_lens_sum``, here a lower bound), so the worker decides K at resolve time (:func:`eligible`) and the
decode call reuses that decision. ``ER_VERL_SYNC_FREE=0`` keeps SGLang's synchronous resolve for every batch.

Measured on one H200 host (``results/issue4_bench_decode_sync_free_h200.json``, 3.5k-token prompts, window 512,
forced α 0.9, prefill included): K=1 195 / 969 / 1327 tok/s at bs 1 / 8 / 32 against 148 / 744 / 1210 with the
synchronous resolve. The GPU distribution test with this path active passes
(``test_windowed_sync_free_rounds_keep_plain_distribution``).
"""

from __future__ import annotations

import os

from er_verl.engine.draft_window import SINKS

SYNC_FREE_ENV = "ER_VERL_SYNC_FREE"


def enabled(environ=None) -> bool:
    raw = (environ if environ is not None else os.environ).get(SYNC_FREE_ENV, "").strip() or "1"
    if raw not in ("0", "1"):
        raise ValueError(f"{SYNC_FREE_ENV}={raw!r}: expected 1 (windowed rounds skip the host wait) or 0 (SGLang's)")
    return raw == "1"


def eligible(prev_lens_cpu, window: int, bs: int, graph_max_bs: int, gpu_planned: bool = False) -> bool:
    """A decode batch's round can be prepared from stale host lengths: the round replays CUDA graphs
    (bs <= ``graph_max_bs``), and its draft steps' attention needs no host lengths, either because the draft
    backend plans on the GPU (``gpu_planned``: SGLang's triton backend, ``needs_cpu_seq_lens`` False) or
    because the draft window is on and every request's last known length already fills it."""
    if prev_lens_cpu is None or bs == 0 or bs > graph_max_bs or len(prev_lens_cpu) != bs:
        return False
    if gpu_planned:
        return True
    return window > 0 and int(prev_lens_cpu.min()) >= SINKS + window


class LengthFetch:
    """The exact new lengths of a batch, copied device → pinned host without blocking; :meth:`wait` blocks once
    (on the CPU, where there is nothing to wait for, the copy is already done)."""

    def __init__(self, seq_lens):
        import torch

        self.host = torch.empty(seq_lens.shape, dtype=seq_lens.dtype, pin_memory=seq_lens.is_cuda)
        self.host.copy_(seq_lens, non_blocking=seq_lens.is_cuda)
        self.event = None
        if seq_lens.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def wait(self):
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.host


ACTIVE = {"worker": None}  # the scheduler process's self-spec worker (set by the worker; one per process)


def resolve_around(original, future_map, batch):
    """AROUND ``FutureMap.resolve_seq_lens_cpu``: the GPU side only, for a batch the worker will run as a windowed
    speculative round (``worker.presync_k(batch)`` > 0); SGLang's own resolve for everything else."""
    worker = ACTIVE["worker"]
    draft_input = getattr(batch, "spec_info", None)
    fi = getattr(draft_input, "future_indices", None)
    ready = getattr(future_map, "publish_ready", None)
    if worker is None or fi is None or ready is None or not worker.presync_k(batch):
        return original(future_map, batch)
    if not ACTIVE.get("announced"):
        ACTIVE["announced"] = True
        print(f"er_verl[scheduler]: first sync-free resolve (bs {len(batch.seq_lens_cpu)}): rounds whose drafts need "
              f"no host lengths are prepared while the previous one runs ({SYNC_FREE_ENV}=0 turns this off)", flush=True)
    ready.wait()  # the schedule stream (and the forward stream after it) waits for the publish; the host does not
    batch.seq_lens = future_map.new_seq_lens_buf[fi]
    worker.pending_lengths = LengthFetch(batch.seq_lens)
    batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())  # of the lower bound; the verify pass gets the exact sum
    return None


def exact_lengths(worker, batch) -> None:
    """Before the verify pass (or a plain step that replaces a failed round): give ``batch`` the exact host
    lengths the resolve hook left pending for this decode call; a no-op when it left none."""
    fetch = getattr(worker, "pending_lengths", None)
    if fetch is not None:
        batch.seq_lens_cpu = fetch.wait()
        batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
