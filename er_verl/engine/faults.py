"""Fault injection for the reliability tests: ``ER_VERL_FAULT="requant@2,round@5"`` makes the 2nd drafter
requant and the 5th speculative round raise, to show that each falls back to plain decoding with a warning
and the rollout completes. ``capture@N`` makes the N-th CUDA-graph set er_verl captures at launch run out of
memory inside stream capture (a real allocator OOM, :func:`oom_in_capture`); the order is the worker's
(``worker.py``: drafter decode graphs, the target's K=0 decode graphs, then the verify state of K=0, 1, ...).
Unset (the default) it costs one integer increment per event."""

from __future__ import annotations

import contextlib
import os

FAULT_ENV = "ER_VERL_FAULT"
STACK_DUMP_ENV = "ER_VERL_STACK_DUMP"  # seconds: dump every thread's Python stack to stderr that often
KINDS = ("requant", "round", "capture")


class InjectedFault(RuntimeError):
    """Raised where ``ER_VERL_FAULT`` asks for it."""


def parse(raw: str) -> dict[str, set[int]]:
    """``"requant@2,round@5,round@9"`` → {"requant": {2}, "round": {5, 9}}; ValueError naming a bad item."""
    plan: dict[str, set[int]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        kind, _, nth = item.partition("@")
        if kind not in KINDS or not nth.isdigit() or int(nth) < 1:
            raise ValueError(f"{FAULT_ENV} item {item!r} is invalid: allowed is KIND@N with KIND in "
                             f"{', '.join(KINDS)} and N >= 1 (the N-th such event raises).")
        plan.setdefault(kind, set()).add(int(nth))
    return plan


class Faults:
    def __init__(self, plan: dict[str, set[int]]):
        self.plan = plan
        self.counts = {kind: 0 for kind in KINDS}

    @classmethod
    def from_env(cls, environ=os.environ) -> "Faults":
        return cls(parse(environ.get(FAULT_ENV, "")))

    def fires(self, kind: str) -> bool:
        """Count one ``kind`` event; True if the plan names this one."""
        self.counts[kind] += 1
        return self.counts[kind] in self.plan.get(kind, ())

    def check(self, kind: str) -> None:
        """Count one ``kind`` event; raise InjectedFault if the plan names this one."""
        if self.fires(kind):
            raise InjectedFault(f"{FAULT_ENV}: injected {kind} fault #{self.counts[kind]}")


@contextlib.contextmanager
def oom_in_capture(faults: Faults, model):
    """Count one ``capture`` event; if the plan names it, every forward of ``model`` made while a CUDA stream
    is capturing first asks the caching allocator for 1 PiB, so graph capture fails as it would when the
    graph pool runs out (``torch.OutOfMemoryError`` raised inside ``torch.cuda.graph``)."""
    if not faults.fires("capture"):
        yield
        return
    import torch

    own = vars(model).get("forward")
    inner = model.forward

    def forward(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
        return inner(*args, **kwargs)

    model.forward = forward
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def arm_stack_dump(environ=os.environ) -> bool:
    """``ER_VERL_STACK_DUMP=S``: every S seconds this process writes all its threads' Python stacks to stderr
    (``faulthandler``), to see where a scheduler hangs in a GPU test. Returns whether it was armed."""
    raw = environ.get(STACK_DUMP_ENV, "").strip()
    if not raw:
        return False
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"{STACK_DUMP_ENV}={raw!r}: expected a positive number of seconds")
    import faulthandler

    faulthandler.dump_traceback_later(seconds, repeat=True)
    return True
