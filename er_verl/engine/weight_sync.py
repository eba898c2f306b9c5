"""Notice of every change to the target's weights inside an SGLang scheduler process.

SGLang changes target weights through five paths (``SchedulerWeightUpdaterManager``):
``update_weights_from_tensor`` (verl's path), ``_from_ipc``, ``_from_distributed``, ``_from_disk`` and
``resume_memory_occupation`` (waking up from sleep restores weights from the CPU backup). The engine
plugin hooks all five; each successful call reaches :func:`notify`, which runs the listeners the
drafter registers (it marks itself dirty and requantizes before the next speculative step).
"""

import logging
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger(__name__)

SOURCES = ("tensor", "ipc", "distributed", "disk", "resume")


@dataclass
class WeightSyncEvents:
    """Listeners and counts of target-weight changes in this process."""

    listeners: list[Callable[[str], None]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SOURCES})

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self.listeners.append(listener)

    def notify(self, source: str) -> None:
        """Record one change of target weights through ``source`` and run every listener.

        A failing listener is logged and skipped: a weight sync never fails because of er_verl.
        """
        if source not in SOURCES:
            raise ValueError(f"weight-sync source {source!r} is unknown: allowed are {list(SOURCES)}.")
        self.counts[source] += 1
        # print, not logging: verl launches SGLang with log_level=error, which would hide it.
        print(f"er_verl[scheduler]: target weights changed via {source} ({sum(self.counts.values())} so far)", flush=True)
        for listener in list(self.listeners):
            try:
                listener(source)
            except Exception:
                logger.warning("er_verl: weight-sync listener %r failed", listener, exc_info=True)


EVENTS = WeightSyncEvents()
"""The scheduler process's single instance (one scheduler process per TP rank)."""
