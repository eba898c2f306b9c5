"""RoundProfiler on the CPU with fake CUDA events and a fake clock."""

import json

import pytest

from er_verl.engine import profile
from er_verl.engine.profile import RoundProfiler, profile_every


class FakeEvent:
    def __init__(self, t):
        self.t, self.synced = t, False

    def synchronize(self):
        self.synced = True

    def elapsed_time(self, other):
        return other.t - self.t


def test_profile_every_reads_the_env_and_explains_bad_values():
    assert profile_every({}) == 0 and profile_every({"ER_VERL_PROFILE_EVERY": "50"}) == 50
    with pytest.raises(ValueError, match="ER_VERL_PROFILE_EVERY='x'.*decode calls"):
        profile_every({"ER_VERL_PROFILE_EVERY": "x"})


def test_summary_per_k_with_gpu_host_gap_and_graph_shares():
    now = {"t": 0.0}
    gpu = {"t": 0.0}
    lines = []

    def event():
        return FakeEvent(gpu["t"])

    prof = RoundProfiler(every=3, event_factory=event, clock=lambda: now["t"], out=lines.append)
    # call 1: K=0, 5 ms GPU, 1 ms host; call 2: K=4 after a 2 ms gap, 12 ms GPU, 4 draft steps (3 graphs)
    prof.begin(0, 0); gpu["t"] += 5; now["t"] += 0.001; prof.end(0, True, 0, 0)
    now["t"] += 0.002
    prof.begin(0, 0); gpu["t"] += 12; now["t"] += 0.003; prof.end(4, False, 4, 3)
    assert not lines
    now["t"] += 0.004
    prof.begin(4, 3); gpu["t"] += 7; now["t"] += 0.001; prof.end(0, True, 4, 3)
    assert len(lines) == 2 and lines[0].startswith("er_verl[profile] K=0 calls=2 gpu_ms=6.00")
    assert "K=4 calls=1 gpu_ms=12.00 host_ms=3.00 gap_ms=2.00 target_graph=0.00 draft_graph=0.75" in lines[1]
    assert "gap_ms=4.00" in lines[0] and "draft_graph=-" in lines[0]  # the first call has no gap
    assert lines[1].endswith("idle_ms=0.00 prelaunch_ms=-")
    assert prof.pending == [] and prof.report() == {}


def test_idle_before_a_call_and_host_time_to_its_first_launch():
    """idle_ms: GPU time from the previous call's end event to this call's start event (the GPU waited for the
    scheduler); prelaunch_ms: host time from the call's start to its first launch (a second mark is ignored)."""
    now = {"t": 0.0}
    gpu = {"t": 0.0}
    lines = []
    prof = RoundProfiler(every=2, event_factory=lambda: FakeEvent(gpu["t"]), clock=lambda: now["t"],
                         out=lines.append)
    prof.begin(0, 0); gpu["t"] += 20; now["t"] += 0.005; prof.end(4, True, 4, 4)
    gpu["t"] += 2.5                                      # the GPU drained and idled 2.5 ms before the next call
    prof.begin(4, 4)
    now["t"] += 0.0012; prof.launched()
    now["t"] += 0.003; prof.launched()                   # ignored: not the first launch
    gpu["t"] += 20; prof.end(4, True, 8, 8)
    assert lines == ["er_verl[profile] K=4 calls=2 gpu_ms=20.00 host_ms=4.60 gap_ms=0.00 target_graph=1.00 "
                     "draft_graph=1.00 idle_ms=2.50 prelaunch_ms=1.20"]
    prof.launched()                                      # outside a call: nothing to mark


def test_timeline_appends_json_lines_in_batches(tmp_path):
    import json

    from er_verl.engine.profile import Timeline, timeline_from_env

    path = tmp_path / "t.jsonl"
    clock = iter(range(10))
    tl = Timeline(str(path), flush_every=2, flush_s=100.0, clock=lambda: float(next(clock)), idle_flush_s=None)
    tl.record(8, 0)
    assert not path.exists()
    tl.record(4, 3)
    tl.record(2, 5)
    tl.flush()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"t": 0.0, "bs": 8, "k": 0}, {"t": 1.0, "bs": 4, "k": 3}, {"t": 2.0, "bs": 2, "k": 5}]
    assert timeline_from_env({}) is None and timeline_from_env({"ER_VERL_TIMELINE": str(path)}).path == str(path)


def test_timeline_flushes_the_calls_before_a_pause_without_a_later_call(tmp_path):
    """A rollout's last decode calls reach the file while the scheduler idles (verl trains between rollouts)."""
    import time

    from er_verl.engine.profile import Timeline

    path = tmp_path / "t.jsonl"
    tl = Timeline(str(path), flush_every=1000, flush_s=1000.0, idle_flush_s=0.05)
    tl.record(3, 0)
    tl.record(1, 4)
    deadline = time.time() + 10
    while time.time() < deadline and not (path.exists() and len(path.read_text().splitlines()) == 2):
        time.sleep(0.02)
    assert [line.split('"bs": ')[1] for line in path.read_text().splitlines()] == ["3, \"k\": 0}", "1, \"k\": 4}"]


def test_torch_windows_profile_each_k_and_bs_once_after_skipping():
    from er_verl.engine.profile import TorchWindows, torch_windows_from_env

    written = []
    w = TorchWindows("/d", skip=2, count=3, clock=iter(range(0, 1000)).__next__,
                     writer=lambda base, prof, window: written.append((base, window)))
    for k, bs in [(4, 1)] * 7 + [(0, 1)] * 3 + [(4, 1)] * 4 + [(4, 8)] * 4:
        w.before(k, bs)
        w.after()
    # (4,1): calls 3..5 profiled; (0,1): call 3 starts a window cut short by (4,1); (4,1) is not redone.
    # The (4, 8) window is still open after its 4th call (2 of 3 profiled), so not written yet.
    assert [(b, win[:3]) for b, win in written] == [("/d/torchprof_k4_bs1", (4, 1, 3)),
                                                   ("/d/torchprof_k0_bs1", (0, 1, 1))]
    assert torch_windows_from_env({}) is None
    assert torch_windows_from_env({"ER_VERL_TORCH_PROFILE": "/x:5:7"}).count == 7
    with pytest.raises(ValueError, match="DIR:SKIP:COUNT"):
        torch_windows_from_env({"ER_VERL_TORCH_PROFILE": "/x:5"})


def test_python_profile_windows_write_the_scheduler_threads_hot_functions(tmp_path):
    """ER_VERL_PY_PROFILE: the same windows as the torch ones, written as cProfile tables of what ran between
    the first profiled call's start and the last one's end (our calls and the scheduling between them)."""
    from er_verl.engine.profile import torch_windows_from_env

    w = torch_windows_from_env({"ER_VERL_PY_PROFILE": f"{tmp_path}:1:2"})

    def busy_host_work():
        return sum(i * i for i in range(20000))

    for _ in range(4):
        w.before(4, 1)
        busy_host_work()
        w.after()
    text = (tmp_path / "pyprof_k4_bs1.txt").read_text()
    assert text.startswith("K=4 bs=1 calls=2 ")
    assert "sorted by cumulative" in text and "sorted by tottime" in text
    assert "busy_host_work" in text
    with pytest.raises(ValueError, match="both set"):
        torch_windows_from_env({"ER_VERL_PY_PROFILE": "/x", "ER_VERL_TORCH_PROFILE": "/y"})
    with pytest.raises(ValueError, match="ER_VERL_PY_PROFILE='/x:1'"):
        torch_windows_from_env({"ER_VERL_PY_PROFILE": "/x:1"})


class _Mode:
    def __init__(self, decode):
        self.decode = decode

    def is_decode(self):
        return self.decode


class _Batch:
    def __init__(self, n, decode):
        self.reqs, self.forward_mode = [object()] * n, _Mode(decode)


def test_plain_decode_hook_records_decode_calls_only(tmp_path):
    path = tmp_path / "tl.jsonl"
    timeline = profile.Timeline(str(path), flush_every=1)
    result = object()
    assert timeline.after_plain_decode(result, None, _Batch(7, True)) is result
    assert timeline.after_plain_decode(result, None, _Batch(3, False)) is result  # a prefill: not recorded
    assert timeline.after_plain_decode(result, None, batch=_Batch(2, True)) is result
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["bs"], r["k"]) for r in rows] == [(7, 0), (2, 0)]


def test_each_report_ends_with_the_describe_line_when_one_is_given():
    gpu, lines, views = {"t": 0.0}, [], iter(["controller bs=2: t_ar=5.00 ms", None])
    prof = RoundProfiler(every=1, event_factory=lambda: FakeEvent(gpu["t"]), clock=lambda: 0.0, out=lines.append,
                         describe=lambda: next(views))
    for _ in range(2):
        prof.begin(0, 0); gpu["t"] += 5; prof.end(0, True, 0, 0)
    assert lines[1] == "er_verl[profile] controller bs=2: t_ar=5.00 ms" and len(lines) == 3  # None: no line
