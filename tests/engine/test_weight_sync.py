import pytest

from er_verl.engine.weight_sync import SOURCES, WeightSyncEvents


def test_notify_counts_and_runs_listeners_in_order():
    events, seen = WeightSyncEvents(), []
    events.subscribe(lambda s: seen.append(("a", s)))
    events.subscribe(lambda s: seen.append(("b", s)))
    for source in SOURCES:
        events.notify(source)
    assert seen == [(name, s) for s in SOURCES for name in ("a", "b")]
    assert events.counts == {s: 1 for s in SOURCES}


def test_failing_listener_does_not_stop_the_others():
    events, seen = WeightSyncEvents(), []
    events.subscribe(lambda s: 1 / 0)
    events.subscribe(seen.append)
    events.notify("resume")
    assert seen == ["resume"]


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="'nccl' is unknown: allowed are"):
        WeightSyncEvents().notify("nccl")
