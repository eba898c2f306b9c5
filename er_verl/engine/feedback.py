"""What the controller learns from each decode call, read one call later so nothing waits on the GPU.

For every decode call the worker records CUDA events (start; for a round also just before the first
draft forward and after drafting; end), the batch's group keys, its K and, for a speculative round, the
GPU tensor of accepted drafts per request. At the start of a later call, every record whose end event
has completed is turned into controller updates:

* K = 0: one TARGET step of batch B taking t(start→end);
* K > 0: K DRAFT steps of t(draft start→drafted)/K each, one VERIFY pass of t(drafted→end) over
  B·(K+1) tokens (sampling included) plus t(start→draft start), the round's preparation, paid once per
  round whatever K is; and one acceptance count per request for its group's posterior. (Charged to the
  draft steps, that preparation made each draft step look dearer and longer K worse than they are. In
  issue 5's runs 9 and 10 every timed round was K = 1; in run 11, with this split, still, so that was not
  the whole cause.)

Records whose events are still running stay queued (at most ``max_pending``; the oldest are dropped).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Sequence

from er_verl.control.cost_model import StepKind


@dataclass
class Record:
    groups: Sequence[Hashable]
    k: int
    start: Any
    drafted: Any           # event after the draft steps (None for K = 0)
    end: Any
    accepted: Any = None   # [B] accepted drafts per request (K > 0): a host tensor whose copy precedes `end`
    draft_start: Any = None  # event just before the first draft forward (None: not marked)


class RoundFeedback:
    def __init__(self, controller, event_factory: Optional[Callable[[], Any]] = None, max_pending: int = 8):
        self.controller = controller
        self.event = event_factory or _cuda_event
        self.pending: deque[Record] = deque(maxlen=max_pending)
        self._start = self._drafted = self._draft_start = None
        self.harvested = 0
        self.on_round: Optional[Callable[[int, list], None]] = None  # (K, accepted per request) listener

    def begin(self) -> None:
        """Start of a decode call: learn from finished records, then mark the start."""
        self.harvest()
        self._start, self._drafted, self._draft_start = self.event(), None, None

    def draft_started(self) -> None:
        """Just before the round's first draft forward is launched: its preparation is done."""
        self._draft_start = self.event()

    def drafted(self) -> None:
        self._drafted = self.event()

    def end(self, groups: Sequence[Hashable], k: int, accepted=None) -> None:
        if self._start is None:
            return
        self.pending.append(Record(list(groups), k, self._start, self._drafted, self.event(), accepted,
                                   self._draft_start))
        self._start = self._drafted = self._draft_start = None

    def harvest(self) -> int:
        """Feed every completed record (oldest first) to the controller; returns how many."""
        done = 0
        while self.pending and self.pending[0].end.query():
            r = self.pending.popleft()
            bs = len(r.groups)
            if r.k == 0 or r.drafted is None:
                self.controller.observe_step(StepKind.TARGET, bs, r.start.elapsed_time(r.end) / 1e3)
            else:
                first = r.draft_start or r.start
                prep = r.start.elapsed_time(first) if r.draft_start is not None else 0.0
                self.controller.observe_step(StepKind.DRAFT, bs, first.elapsed_time(r.drafted) / 1e3 / r.k)
                self.controller.observe_step(StepKind.VERIFY, bs, (r.drafted.elapsed_time(r.end) + prep) / 1e3, r.k)
                if r.accepted is not None:
                    accepted = r.accepted.tolist()
                    self.controller.observe_round(r.groups, r.k, accepted)
                    if self.on_round is not None:
                        self.on_round(r.k, accepted)
            done += 1
        self.harvested += done
        return done


def _cuda_event():
    import torch

    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event
