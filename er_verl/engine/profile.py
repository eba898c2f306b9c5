"""Where a decode round's time goes, for finding overheads on the GPU host (off unless asked for).

``ER_VERL_PROFILE_EVERY=N`` makes the self-draft worker print, every N decode calls, one line per K:

    er_verl[profile] K=4 calls=200 gpu_ms=12.1 host_ms=3.4 gap_ms=6.0 target_graph=1.00 draft_graph=1.00
        idle_ms=0.9 prelaunch_ms=1.1

gpu_ms: GPU time of the call (CUDA events around it: drafting, verify, sampling); host_ms: Python time
inside the call; gap_ms: host time between the end of one call and the start of the next (the
scheduler: batch preparation, result processing, waiting on the previous step); target_graph: share
of calls whose verify replayed a CUDA graph; draft_graph: share of draft forwards that did; idle_ms and
prelaunch_ms: see :class:`RoundProfiler`. Reading events costs one synchronize per report, nothing per step.
With the controller on, each report ends with its predictions for the last decode batch
(``Controller.describe``: plain / draft / verify times, the gate's acceptance estimates, S(K)).
"""

from __future__ import annotations

import os
import threading
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
    """Collects (K, events, host times, graph use) per decode call; prints a per-K summary every N.

    Two more columns locate the GPU's idle time between calls: ``idle_ms``, the GPU time from the previous call's
    end event to this call's start event (the GPU had drained and waited for the scheduler; ~0 when this call was
    queued while the GPU was still busy), and ``prelaunch_ms``, the host time from this call's start until its
    first forward (a CUDA graph replay, or an eager forward's kernels) was launched (:meth:`launched`; "-" when
    no call of that K reported one). While the GPU is drained, idle_ms + prelaunch_ms is roughly its idle time
    per call."""

    def __init__(self, every: int, event_factory=None, clock=time.perf_counter, out=print, describe=None):
        self.every, self.clock, self.out = every, clock, out
        self.describe = describe  # () -> str or None: one more line per report (the controller's view)
        self.event_factory = event_factory or _cuda_event
        self.pending: list = []
        self.last_end = None
        self.last_stop = None  # the previous call's end event
        self._open = None

    def begin(self, draft_steps: int, draft_graphs: int) -> None:
        start = self.event_factory()
        now = self.clock()
        gap = None if self.last_end is None else (now - self.last_end) * 1e3
        self._open = dict(start=start, t0=now, gap=gap, steps0=draft_steps, graphs0=draft_graphs,
                          idle_from=self.last_stop, prelaunch=None)

    def launched(self) -> None:
        """The call's first forward was just launched (later marks in the same decode call are ignored)."""
        if self._open is not None and self._open["prelaunch"] is None:
            self._open["prelaunch"] = (self.clock() - self._open["t0"]) * 1e3

    def end(self, k: int, target_graph: bool, draft_steps: int, draft_graphs: int) -> None:
        if self._open is None:
            return
        row, self._open = self._open, None
        stop = self.event_factory()
        self.last_end, self.last_stop = self.clock(), stop
        row.update(k=k, stop=stop, host=(self.last_end - row["t0"]) * 1e3, target_graph=bool(target_graph),
                   steps=draft_steps - row["steps0"], graphs=draft_graphs - row["graphs0"])
        self.pending.append(row)
        if len(self.pending) >= self.every:
            self.report()

    def report(self) -> dict:
        """Print and return {K: summary}; synchronizes on the last event once."""
        if not self.pending:
            return {}
        self.pending[-1]["stop"].synchronize()
        rows = defaultdict(list)
        for row in self.pending:
            rows[row["k"]].append(row)
        summary = {}
        for k, rs in sorted(rows.items()):
            gaps = [r["gap"] for r in rs if r["gap"] is not None]
            idles = [r["idle_from"].elapsed_time(r["start"]) for r in rs if r["idle_from"] is not None]
            prelaunch = [r["prelaunch"] for r in rs if r["prelaunch"] is not None]
            drafts = sum(r["steps"] for r in rs)
            summary[k] = s = dict(
                calls=len(rs), gpu_ms=sum(r["start"].elapsed_time(r["stop"]) for r in rs) / len(rs),
                host_ms=sum(r["host"] for r in rs) / len(rs), gap_ms=sum(gaps) / len(gaps) if gaps else 0.0,
                target_graph=sum(r["target_graph"] for r in rs) / len(rs),
                draft_graph=sum(r["graphs"] for r in rs) / drafts if drafts else None,
                idle_ms=sum(idles) / len(idles) if idles else None,
                prelaunch_ms=sum(prelaunch) / len(prelaunch) if prelaunch else None,
            )
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            self.out(f"er_verl[profile] K={k} calls={s['calls']} gpu_ms={s['gpu_ms']:.2f} host_ms={s['host_ms']:.2f} "
                     f"gap_ms={s['gap_ms']:.2f} target_graph={s['target_graph']:.2f} "
                     f"draft_graph={fmt(s['draft_graph'])} idle_ms={fmt(s['idle_ms'])} "
                     f"prelaunch_ms={fmt(s['prelaunch_ms'])}")
        self.pending.clear()
        extra = self.describe() if self.describe is not None else None
        if extra:
            self.out(f"er_verl[profile] {extra}")
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
    at shutdown), and by a daemon thread every ``idle_flush_s`` seconds (the last calls before a pause, e.g.
    a rollout's tail while verl trains, would otherwise wait for the next call). ``er-verl bench rollout``
    and ``er-verl quickstart`` plot it."""

    def __init__(self, path: str, flush_every: int = 64, flush_s: float = 1.0, clock=time.time,
                 idle_flush_s: float | None = 2.0):
        self.path, self.flush_every, self.flush_s, self.clock = path, flush_every, flush_s, clock
        self.rows: list[str] = []
        self.last_flush = None
        self.lock = threading.Lock()
        if idle_flush_s:
            threading.Thread(target=self._flush_every, args=(idle_flush_s,), daemon=True,
                             name="er_verl-timeline").start()

    def _flush_every(self, seconds: float) -> None:
        while True:
            time.sleep(seconds)
            self.flush()

    def record(self, batch_size: int, k: int) -> None:
        now = self.clock()
        with self.lock:
            self.rows.append(f'{{"t": {now:.6f}, "bs": {batch_size}, "k": {k}}}')
        if self.last_flush is None:
            self.last_flush = now
        if len(self.rows) >= self.flush_every or now - self.last_flush >= self.flush_s:
            self.flush()
            self.last_flush = now

    def after_plain_decode(self, result, worker=None, batch=None, *args, **kwargs):
        """AFTER hook on plain SGLang's ``TpModelWorker.forward_batch_generation``: records decode calls
        (K = 0), returns the result untouched."""
        mode = getattr(batch, "forward_mode", None)
        if mode is not None and mode.is_decode():
            self.record(len(batch.reqs) if hasattr(batch, "reqs") else int(batch.seq_lens.shape[0]), 0)
        return result

    def flush(self) -> None:
        with self.lock:
            rows, self.rows = self.rows, []
        if rows:
            with open(self.path, "a") as f:
                f.write("\n".join(rows) + "\n")


def timeline_from_env(environ=os.environ):
    path = environ.get(TIMELINE_ENV, "").strip()
    return Timeline(path) if path else None


TORCH_PROFILE_ENV = "ER_VERL_TORCH_PROFILE"  # "DIR[:SKIP:COUNT]": torch.profiler windows per (K, bs)


class TorchWindows:
    """``ER_VERL_TORCH_PROFILE=DIR[:SKIP:COUNT]``: for each (K, batch size) seen, skip its first SKIP decode
    calls (default 20), then run ``torch.profiler`` over the next COUNT (default 10) and write
    ``DIR/torchprof_k{K}_bs{B}.txt`` (wall ms per call; the top ops by GPU and by CPU self time) and a gzipped
    chrome trace beside it. One window at a time; a window cut short by another (K, bs) is written as is.
    With ``ER_VERL_PY_PROFILE`` instead, the same windows run cProfile over the scheduler thread and write
    ``DIR/pyprof_k{K}_bs{B}.txt`` (where the host's Python goes). For finding where a round's time goes on the
    GPU host; costs nothing when the variables are unset."""

    def __init__(self, directory: str, skip: int = 20, count: int = 10, clock=time.perf_counter, writer=None,
                 starter=None, prefix: str = "torchprof"):
        self.directory, self.skip, self.count, self.clock, self.prefix = directory, skip, count, clock, prefix
        self.writer = writer or _write_window  # (base path, profiler, calls, wall ms) -> None
        self.starter = starter if starter is not None else (_torch_profiler if writer is None else None)
        self.seen: dict = defaultdict(int)
        self.done: set = set()
        self.active = None  # (key, profiler, t0, calls)

    def before(self, k: int, bs: int) -> None:
        key = (k, bs)
        if self.active is not None and self.active[0] != key:
            self._finish()
        self.seen[key] += 1
        if self.active is None and key not in self.done and self.seen[key] > self.skip:
            prof = self.starter() if self.starter is not None else None
            self.active = [key, prof, self.clock(), 0]

    def after(self) -> None:
        if self.active is None:
            return
        self.active[3] += 1
        if self.active[3] >= self.count:
            self._finish()

    def _finish(self) -> None:
        (k, bs), prof, t0, calls = self.active
        self.active = None
        self.done.add((k, bs))
        if prof is not None and self.starter is _torch_profiler:
            import torch

            torch.cuda.synchronize()
        wall = (self.clock() - t0) * 1e3 / max(calls, 1)
        base = os.path.join(self.directory, f"{self.prefix}_k{k}_bs{bs}")
        self.writer(base, prof, (k, bs, calls, wall))
        print(f"er_verl[profile] {self.prefix} window K={k} bs={bs}: {calls} calls, {wall:.2f} ms/call -> {base}.txt",
              flush=True)


def _torch_profiler():
    import torch

    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                              torch.profiler.ProfilerActivity.CUDA])
    prof.__enter__()
    return prof


def _write_window(base: str, prof, window: tuple) -> None:
    """Stop ``prof``; write the op tables (``base.txt``) and the gzipped chrome trace (``base.json.gz``)."""
    import gzip

    k, bs, calls, wall = window
    prof.__exit__(None, None, None)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    avg = prof.key_averages()
    lines = [f"K={k} bs={bs} calls={calls} wall_ms_per_call={wall:.3f}"]
    for sort in ("self_cuda_time_total", "self_cpu_time_total"):
        try:
            lines += [f"--- sorted by {sort}", avg.table(sort_by=sort, row_limit=30, max_name_column_width=70)]
        except Exception as exc:  # noqa: BLE001 - a renamed sort key must not lose the window
            lines.append(f"--- {sort}: {exc!r}")
    with open(base + ".txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    prof.export_chrome_trace(base + ".json")
    with open(base + ".json", "rb") as src, gzip.open(base + ".json.gz", "wb") as dst:
        dst.write(src.read())
    os.remove(base + ".json")


PY_PROFILE_ENV = "ER_VERL_PY_PROFILE"  # "DIR[:SKIP:COUNT]": cProfile windows per (K, bs), the host's Python


def _py_profiler():
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _write_py_window(base: str, prof, window: tuple) -> None:
    """Stop ``prof``; write ``base.txt``: the scheduler thread's Python over the window (our decode calls and
    SGLang's scheduling between them), by cumulative and by own time (totals over the window's calls)."""
    import io
    import pstats

    k, bs, calls, wall = window
    prof.disable()
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    text = io.StringIO()
    text.write(f"K={k} bs={bs} calls={calls} wall_ms_per_call={wall:.3f} (cProfile; times are totals over the "
               f"{calls} calls, inflated by the profiler)\n")
    for sort, rows in (("cumulative", 70), ("tottime", 40)):
        text.write(f"--- sorted by {sort}\n")
        pstats.Stats(prof, stream=text).sort_stats(sort).print_stats(rows)
    with open(base + ".txt", "w") as f:
        f.write(text.getvalue())


def torch_windows_from_env(environ=os.environ):
    """``ER_VERL_TORCH_PROFILE`` (torch.profiler) or ``ER_VERL_PY_PROFILE`` (cProfile of the scheduler thread):
    the same windows, one kind per launch."""
    found = [(name, environ.get(name, "").strip()) for name in (TORCH_PROFILE_ENV, PY_PROFILE_ENV)]
    found = [(name, raw) for name, raw in found if raw]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"{TORCH_PROFILE_ENV} and {PY_PROFILE_ENV} are both set: profile one kind per launch")
    name, raw = found[0]
    directory, *rest = raw.split(":")
    if len(rest) not in (0, 2) or not all(r.isdigit() for r in rest):
        raise ValueError(f"{name}={raw!r}: expected DIR or DIR:SKIP:COUNT (decode calls)")
    if name == PY_PROFILE_ENV:
        return TorchWindows(directory, *(int(r) for r in rest), writer=_write_py_window, starter=_py_profiler,
                            prefix="pyprof")
    return TorchWindows(directory, *(int(r) for r in rest))


class DecodeSummary:
    """Always on: what the decode steps did since the last report, printed at each weight change (one
    rollout of verl's) when any decode ran, e.g.

        er_verl[scheduler]: 5120 decode calls, speculating in 12% (K histogram {0: 4500, 2: 620}),
        mean batch 61.3, accepted 0.41 of drafted tokens (1.82 tokens per request-round)

    Acceptance comes from the controller feedback (``note_round``), read lagged, so it never waits on
    the GPU; without a controller it is left out. ``probes`` (the controller's running count of plain
    steps it ran to measure a batch size before speculating there) adds ", N probes" when N > 0."""

    def __init__(self, out=None, probes=None):
        self.out = out or (lambda text: print(text, flush=True))
        self.probes = probes
        self.probes_before = 0
        self.reset()

    def reset(self) -> None:
        self.k_counts: dict[int, int] = defaultdict(int)
        self.requests = 0
        self.drafted = self.accepted = self.request_rounds = 0
        self.probes_before = self.probes() if self.probes else 0

    def record(self, batch_size: int, k: int) -> None:
        self.k_counts[k] += 1
        self.requests += batch_size

    def note_round(self, k: int, accepted: list) -> None:
        self.drafted += k * len(accepted)
        self.accepted += sum(accepted)
        self.request_rounds += len(accepted)

    def line(self) -> str:
        calls = sum(self.k_counts.values())
        spec = calls - self.k_counts.get(0, 0)
        text = (f"{calls} decode calls, speculating in {spec / calls:.0%} (K histogram "
                f"{dict(sorted(self.k_counts.items()))}), mean batch {self.requests / calls:.1f}")
        if self.drafted:
            text += (f", accepted {self.accepted / self.drafted:.2f} of drafted tokens "
                     f"({1 + self.accepted / self.request_rounds:.2f} tokens per request-round)")
        probes = self.probes() - self.probes_before if self.probes else 0
        if probes:
            text += f", {probes} probes"
        return text

    def report(self, *_args) -> None:
        """Print and reset (an EVENTS listener: called with the source of a weight change)."""
        if self.k_counts:
            self.out(f"er_verl[scheduler]: {self.line()}")
        self.reset()
