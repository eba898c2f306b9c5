"""What the controller learns from each decode call, read one call later so nothing waits on the GPU.

For every decode call the worker records CUDA events (start, after drafting, end), the batch's group
keys, its K and, for a speculative round, the GPU tensor of accepted drafts per request. At the start
of a later call, every record whose end event has completed is turned into controller updates:

* K = 0: one TARGET step of batch B taking t(start→end);
* K > 0: K DRAFT steps of t(start→draft)/K each, one VERIFY pass of t(draft→end) over B·(K+1) tokens
  (sampling included), and one acceptance count per request for its group's posterior.

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


class RoundFeedback:
    def __init__(self, controller, event_factory: Optional[Callable[[], Any]] = None, max_pending: int = 8):
        self.controller = controller
        self.event = event_factory or _cuda_event
        self.pending: deque[Record] = deque(maxlen=max_pending)
        self._start = self._drafted = None
        self.harvested = 0
        self.on_round: Optional[Callable[[int, list], None]] = None  # (K, accepted per request) listener

    def begin(self) -> None:
        """Start of a decode call: learn from finished records, then mark the start."""
        self.harvest()
        self._start, self._drafted = self.event(), None

    def drafted(self) -> None:
        self._drafted = self.event()

    def end(self, groups: Sequence[Hashable], k: int, accepted=None) -> None:
        if self._start is None:
            return
        self.pending.append(Record(list(groups), k, self._start, self._drafted, self.event(), accepted))
        self._start = self._drafted = None

    def harvest(self) -> int:
        """Feed every completed record (oldest first) to the controller; returns how many."""
        done = 0
        while self.pending and self.pending[0].end.query():
            r = self.pending.popleft()
            bs = len(r.groups)
            if r.k == 0 or r.drafted is None:
                self.controller.observe_step(StepKind.TARGET, bs, r.start.elapsed_time(r.end) / 1e3)
            else:
                self.controller.observe_step(StepKind.DRAFT, bs, r.start.elapsed_time(r.drafted) / 1e3 / r.k)
                self.controller.observe_step(StepKind.VERIFY, bs, r.drafted.elapsed_time(r.end) / 1e3, r.k)
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
