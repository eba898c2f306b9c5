"""The trace-gap analysis on a hand-made chrome trace whose busy, idle and phase times are known."""

import gzip
import json

import pytest

from er_verl.bench import trace_gaps


def _x(cat, name, ts, dur):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


EVENTS = [
    # one draft phase [0, 100) with two overlapping kernels (busy 0-60) and one (70-100): 90 us busy
    _x("gpu_user_annotation", "step[DECODE bs=8]", 0, 100),
    _x("kernel", "gemm", 0, 50), _x("kernel", "norm", 40, 20), _x("kernel", "gemm", 70, 30),
    # sampling kernel outside any phase, after a 100 us gap while the host synchronized
    _x("kernel", "softmax", 200, 25),
    _x("cpu_op", "scheduler.process_batch_result", 90, 150), _x("cuda_runtime", "cudaEventSynchronize", 100, 95),
    # the verify phase after a 75 us gap with no host event
    _x("gpu_user_annotation", "step[TARGET_VERIFY bs=8]", 300, 50), _x("gpu_memcpy", "copy", 300, 50),
]


def test_busy_idle_phases_and_gap_owners():
    s = trace_gaps.analyze(EVENTS, min_gap_us=20)
    assert s["span_us"] == 350 and s["busy_us"] == 90 + 25 + 50 and s["idle_us"] == 350 - 165
    assert s["phases"]["step[DECODE]"] == {"range_us": 100, "count": 1, "busy_us": 90}
    assert s["phases"]["step[TARGET_VERIFY]"]["busy_us"] == 50
    assert s["busy_outside_phases_us"] == 25
    # gaps > 20 us: 100-200 (host in cudaEventSynchronize, the innermost event) and 225-300 (nothing on the host)
    assert s["gap_count"] == 2 and s["gaps_over_min_us"] == 175
    assert s["idle_by_host_event"] == {"cudaEventSynchronize": 100, "(no host event)": 75}
    assert s["largest_gaps"][0]["host"] == ["cudaEventSynchronize", "scheduler.process_batch_result"]


def test_cli_reads_gzipped_traces_and_the_call_count(tmp_path, capsys):
    base = tmp_path / "torchprof_k4_bs8"
    with gzip.open(f"{base}.json.gz", "wt") as f:
        json.dump({"traceEvents": EVENTS}, f)
    (tmp_path / "torchprof_k4_bs8.txt").write_text("K=4 bs=8 calls=5 wall_ms_per_call=1.0\n")
    assert trace_gaps.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "per call (of 5) span 0.07 ms" in out and "cudaEventSynchronize 0.02 ms" in out


def test_a_trace_without_gpu_events_is_refused():
    with pytest.raises(ValueError, match="no GPU kernel"):
        trace_gaps.analyze([_x("cpu_op", "aten::add", 0, 5)])
