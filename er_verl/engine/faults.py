"""Fault injection for the reliability tests: ``ER_VERL_FAULT="requant@2,round@5"`` makes the 2nd drafter
requant and the 5th speculative round raise, to show that each falls back to plain decoding with a warning
and the rollout completes. Unset (the default) it costs one integer increment per event."""

from __future__ import annotations

import os

FAULT_ENV = "ER_VERL_FAULT"
KINDS = ("requant", "round")


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

    def check(self, kind: str) -> None:
        """Count one ``kind`` event; raise InjectedFault if the plan names this one."""
        self.counts[kind] += 1
        if self.counts[kind] in self.plan.get(kind, ()):
            raise InjectedFault(f"{FAULT_ENV}: injected {kind} fault #{self.counts[kind]}")
