"""Where a decode window's wall time goes on the GPU: busy per phase, kernels outside any phase, and idle gaps
with the host work that was running while the GPU waited.

Reads the gzipped chrome traces that ``ER_VERL_TORCH_PROFILE`` writes (``torchprof_k{K}_bs{B}.json.gz``):

- GPU activity = the union of ``kernel``, ``gpu_memcpy`` and ``gpu_memset`` events; span = first start to last end;
- a phase = a ``gpu_user_annotation`` range (the engine's ``step[DECODE bs=8]``, ``step[TARGET_VERIFY bs=8]``);
  the busy time of kernels inside no phase (sampling, bookkeeping) is reported apart;
- idle = span - busy; each gap longer than ``min_gap_us`` is charged to the innermost host event (``cpu_op``,
  ``user_annotation``, ``cuda_runtime``) running at its midpoint, so ``cudaEventSynchronize`` or
  ``scheduler.process_batch_result`` shows where the host made the GPU wait.

``python -m er_verl.bench.trace_gaps DIR_OR_FILES...`` prints one block per trace.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
HOST_CATS = {"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver"}


def _union(intervals):
    """Sorted, merged (start, end) intervals."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _overlap(merged, start, end):
    return sum(max(0.0, min(e, end) - max(s, start)) for s, e in merged)


def _phase_name(name: str) -> str:
    return re.sub(r"\s*bs=\d+", "", name)


def analyze(events: list, min_gap_us: float = 20.0, top: int = 8) -> dict:
    """Summary of one trace's events (chrome-trace dicts with ``cat``, ``name``, ``ts``, ``dur`` in us)."""
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e.get("cat") in GPU_CATS]
    if not gpu:
        raise ValueError("trace has no GPU kernel, memcpy or memset events; was CUDA activity profiled?")
    busy = _union(gpu)
    t0, t1 = busy[0][0], busy[-1][1]
    busy_us = sum(e - s for s, e in busy)
    phases = defaultdict(lambda: [0.0, 0, 0.0])  # name -> [range us, count, busy us inside]
    phase_ranges = []
    for e in spans:
        if e.get("cat") == "gpu_user_annotation":
            start, end = e["ts"], e["ts"] + e["dur"]
            rec = phases[_phase_name(e["name"])]
            rec[0] += e["dur"]
            rec[1] += 1
            rec[2] += _overlap(busy, start, end)
            phase_ranges.append((start, end))
    in_phase = _union(phase_ranges)
    outside = busy_us - sum(_overlap(in_phase, s, e) for s, e in busy)
    host = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in spans if e.get("cat") in HOST_CATS),
                  key=lambda h: h[1] - h[0])
    gaps = [(busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1) if busy[i + 1][0] - busy[i][1] > min_gap_us]
    charged = defaultdict(float)
    listed = []
    for start, end in gaps:
        mid = (start + end) / 2
        owners = [name for s, e, name in host if s <= mid <= e]  # innermost first (sorted by duration)
        charged[owners[0] if owners else "(no host event)"] += end - start
        listed.append((end - start, start - t0, owners[:3]))
    listed.sort(reverse=True)
    return {
        "span_us": t1 - t0, "busy_us": busy_us, "idle_us": (t1 - t0) - busy_us,
        "gaps_over_min_us": sum(e - s for s, e in gaps), "gap_count": len(gaps),
        "phases": {name: {"range_us": r, "count": n, "busy_us": b} for name, (r, n, b) in sorted(phases.items())},
        "busy_outside_phases_us": outside,
        "idle_by_host_event": dict(sorted(charged.items(), key=lambda kv: -kv[1])[:top]),
        "largest_gaps": [{"us": round(d, 1), "at_us": round(a, 1), "host": o} for d, a, o in listed[:top]],
    }


def load(path) -> list:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def report(name: str, s: dict, calls: int = 1) -> str:
    per = lambda us: f"{us / calls / 1e3:.2f}"  # noqa: E731 - ms per call
    lines = [f"== {name}: per call (of {calls}) span {per(s['span_us'])} ms, GPU busy {per(s['busy_us'])} ms "
             f"({s['busy_us'] / s['span_us']:.0%}), idle {per(s['idle_us'])} ms "
             f"({s['gap_count']} gaps > min: {per(s['gaps_over_min_us'])} ms)"]
    for pname, p in s["phases"].items():
        lines.append(f"   phase {pname}: {p['count'] / calls:.1f}/call, range {per(p['range_us'])} ms, "
                     f"busy {per(p['busy_us'])} ms")
    lines.append(f"   busy outside phases: {per(s['busy_outside_phases_us'])} ms")
    lines.append("   idle charged to host event: " + ", ".join(f"{k} {per(v)} ms" for k, v in s["idle_by_host_event"].items()))
    for g in s["largest_gaps"]:
        lines.append(f"   gap {g['us']:.0f} us at +{g['at_us'] / 1e3:.2f} ms: {' < '.join(g['host'])}")
    return "\n".join(lines)


def _calls(trace: Path) -> int:
    txt = Path(str(trace).replace(".json.gz", ".txt"))
    m = re.search(r"calls=(\d+)", txt.read_text()) if txt.exists() else None
    return int(m.group(1)) if m else 1


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        print("usage: python -m er_verl.bench.trace_gaps DIR_OR_TRACE.json.gz...", file=sys.stderr)
        return 2
    paths = []
    for a in args:
        p = Path(a)
        paths += sorted(p.glob("*.json.gz")) if p.is_dir() else [p]
    for p in paths:
        print(report(p.name, analyze(load(p)), _calls(p)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
