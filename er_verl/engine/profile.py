"""Where a decode round's time goes, for finding overheads on the GPU host (off unless asked for).

``ER_VERL_PROFILE_EVERY=N`` makes the self-draft worker print, every N decode calls, one line per K:

    er_verl[profile] K=4 calls=200 gpu_ms=12.1 host_ms=3.4 gap_ms=6.0 target_graph=1.00 draft_graph=1.00

gpu_ms: GPU time of the call (CUDA events around it: drafting, verify, sampling); host_ms: Python time
inside the call; gap_ms: host time between the end of one call and the start of the next (the
scheduler: batch preparation, result processing, waiting on the previous step); target_graph: share
of calls whose verify replayed a CUDA graph; draft_graph: share of draft forwards that did. Reading
events costs one synchronize per report, nothing per step.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

PROFILE_ENV = "ER_VERL_PROFILE_EVERY"


def profile_every(environ=os.environ) -> int:
    """N from ``ER_VERL_PROFILE_EVERY`` (0 = off); ValueError with a sentence for anything else."""
    raw = environ.get(PROFILE_ENV, "").strip() or "0"
    if not raw.isdigit():
        raise ValueError(f"{PROFILE_ENV}={raw!r}: expected a number of decode calls between reports (0 = off)")
    return int(raw)


class RoundProfiler:
    """Collects (K, events, host times, graph use) per decode call; prints a per-K summary every N."""

    def __init__(self, every: int, event_factory=None, clock=time.perf_counter, out=print):
        self.every, self.clock, self.out = every, clock, out
        self.event_factory = event_factory or _cuda_event
        self.pending: list = []
        self.last_end = None
        self._open = None

    def begin(self, draft_steps: int, draft_graphs: int) -> None:
        start = self.event_factory()
        now = self.clock()
        gap = None if self.last_end is None else (now - self.last_end) * 1e3
        self._open = (start, now, gap, draft_steps, draft_graphs)

    def end(self, k: int, target_graph: bool, draft_steps: int, draft_graphs: int) -> None:
        if self._open is None:
            return
        start, t0, gap, steps0, graphs0 = self._open
        self._open = None
        stop = self.event_factory()
        self.last_end = self.clock()
        self.pending.append((k, start, stop, (self.last_end - t0) * 1e3, gap, bool(target_graph),
                             draft_steps - steps0, draft_graphs - graphs0))
        if len(self.pending) >= self.every:
            self.report()

    def report(self) -> dict:
        """Print and return {K: summary}; synchronizes on the last event once."""
        if not self.pending:
            return {}
        self.pending[-1][2].synchronize()
        rows = defaultdict(list)
        for row in self.pending:
            rows[row[0]].append(row)
        summary = {}
        for k, rs in sorted(rows.items()):
            gaps = [r[4] for r in rs if r[4] is not None]
            drafts = sum(r[6] for r in rs)
            summary[k] = dict(
                calls=len(rs), gpu_ms=sum(r[1].elapsed_time(r[2]) for r in rs) / len(rs),
                host_ms=sum(r[3] for r in rs) / len(rs), gap_ms=sum(gaps) / len(gaps) if gaps else 0.0,
                target_graph=sum(r[5] for r in rs) / len(rs),
                draft_graph=sum(r[7] for r in rs) / drafts if drafts else None,
            )
            s = summary[k]
            draft = "-" if s["draft_graph"] is None else f"{s['draft_graph']:.2f}"
            self.out(f"er_verl[profile] K={k} calls={s['calls']} gpu_ms={s['gpu_ms']:.2f} host_ms={s['host_ms']:.2f} "
                     f"gap_ms={s['gap_ms']:.2f} target_graph={s['target_graph']:.2f} draft_graph={draft}")
        self.pending.clear()
        return summary


def _cuda_event():
    import torch

    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


TIMELINE_ENV = "ER_VERL_TIMELINE"


class Timeline:
    """``ER_VERL_TIMELINE=path``: one JSON line per decode call, {"t": seconds, "bs": B, "k": K}, buffered
    and appended every ``flush_every`` calls or ``flush_s`` seconds (a scheduler is killed, not closed,
    at shutdown). ``er-verl bench rollout`` plots it."""

    def __init__(self, path: str, flush_every: int = 64, flush_s: float = 1.0, clock=time.time):
        self.path, self.flush_every, self.flush_s, self.clock = path, flush_every, flush_s, clock
        self.rows: list[str] = []
        self.last_flush = None

    def record(self, batch_size: int, k: int) -> None:
        now = self.clock()
        self.rows.append(f'{{"t": {now:.6f}, "bs": {batch_size}, "k": {k}}}')
        if self.last_flush is None:
            self.last_flush = now
        if len(self.rows) >= self.flush_every or now - self.last_flush >= self.flush_s:
            self.flush()
            self.last_flush = now

    def flush(self) -> None:
        if self.rows:
            with open(self.path, "a") as f:
                f.write("\n".join(self.rows) + "\n")
            self.rows.clear()


def timeline_from_env(environ=os.environ):
    path = environ.get(TIMELINE_ENV, "").strip()
    return Timeline(path) if path else None
