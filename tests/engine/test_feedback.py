"""RoundFeedback: lagged, non-blocking controller updates from fake CUDA events."""

import torch

from er_verl.control.cost_model import StepKind
from er_verl.engine.feedback import RoundFeedback


class Clock:
    def __init__(self):
        self.t, self.done_until = 0.0, float("inf")


class FakeEvent:
    def __init__(self, clock):
        self.clock, self.t = clock, clock.t

    def query(self):
        return self.t <= self.clock.done_until

    def elapsed_time(self, other):
        return other.t - self.t


class Recorder:
    def __init__(self):
        self.steps, self.rounds = [], []

    def observe_step(self, kind, bs, seconds, k=0):
        self.steps.append((StepKind(kind), bs, round(seconds, 6), k))

    def observe_round(self, groups, k, accepted):
        self.rounds.append((list(groups), k, list(accepted)))


def test_records_become_steps_and_rounds_once_their_events_complete():
    clock, rec = Clock(), Recorder()
    clock.done_until = -1                                                           # the GPU is behind
    fb = RoundFeedback(rec, event_factory=lambda: FakeEvent(clock))
    fb.begin(); clock.t += 5; fb.end(["a", "b"], 0)                                 # plain step: 5 ms
    fb.begin(); clock.t += 8; fb.drafted(); clock.t += 6                            # 4 drafts 8 ms, verify 6 ms
    fb.end(["a", "b"], 4, torch.tensor([3, 0]))
    clock.done_until = 5                                                            # only the first finished
    assert fb.harvest() == 1 and rec.steps == [(StepKind.TARGET, 2, 0.005, 0)] and not rec.rounds
    clock.done_until = float("inf")
    fb.begin()                                                                      # the next call harvests
    assert rec.steps[1:] == [(StepKind.DRAFT, 2, 0.002, 0), (StepKind.VERIFY, 2, 0.006, 4)]
    assert rec.rounds == [(["a", "b"], 4, [3, 0])] and fb.harvested == 2


def test_end_without_begin_is_ignored_and_the_queue_is_bounded():
    clock, rec = Clock(), Recorder()
    fb = RoundFeedback(rec, event_factory=lambda: FakeEvent(clock), max_pending=2)
    fb.end(["a"], 0)
    assert not fb.pending
    clock.done_until = -1
    for _ in range(5):
        fb.begin(); clock.t += 1; fb.end(["a"], 0)
    assert len(fb.pending) == 2


def test_harvested_rounds_reach_the_decode_summary():
    from er_verl.engine.profile import DecodeSummary

    clock, lines = Clock(), []
    summary = DecodeSummary(out=lines.append)
    fb = RoundFeedback(Recorder(), event_factory=lambda: FakeEvent(clock))
    fb.on_round = summary.note_round
    for k, accepted in ((0, None), (4, torch.tensor([3, 1])), (0, None), (0, None)):
        summary.record(2, k)
        fb.begin(); clock.t += 1; fb.drafted() if k else None; clock.t += 1; fb.end(["a", "b"], k, accepted)
    fb.harvest()
    summary.report("tensor")
    assert lines == ["er_verl[scheduler]: 4 decode calls, speculating in 25% (K histogram {0: 3, 4: 1}), "
                     "mean batch 2.0, accepted 0.50 of drafted tokens (3.00 tokens per request-round)"]
    summary.report("resume")  # nothing decoded since: no line
    assert len(lines) == 1


def test_the_decode_summary_counts_the_probes_of_its_window():
    from er_verl.engine.profile import DecodeSummary

    decisions, lines = {"probe": 3}, []
    summary = DecodeSummary(out=lines.append, probes=lambda: decisions["probe"])
    summary.record(8, 0)
    summary.report("tensor")  # 3 probes happened before this summary's window
    decisions["probe"] = 5
    summary.record(8, 0)
    summary.report("tensor")
    summary.record(8, 2)
    summary.report("tensor")
    assert [line.endswith(", 2 probes") for line in lines] == [False, True, False]


def test_a_rounds_preparation_is_charged_once_to_its_verify_pass_not_to_each_draft_step():
    clock, rec = Clock(), Recorder()
    fb = RoundFeedback(rec, event_factory=lambda: FakeEvent(clock))
    fb.begin(); clock.t += 2; fb.draft_started(); clock.t += 8; fb.drafted(); clock.t += 6  # prep 2, drafts 8, verify 6
    fb.end(["a"], 4, torch.tensor([2]))
    fb.harvest()
    assert rec.steps == [(StepKind.DRAFT, 1, 0.002, 0), (StepKind.VERIFY, 1, 0.008, 4)]
    draft, verify = rec.steps[0][2], rec.steps[1][2]
    assert 4 * draft + verify == 0.016  # the round's whole time, start to end
