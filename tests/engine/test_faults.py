"""ER_VERL_FAULT: parsing, counting, and an injected requant fault going through the drafter's fallback."""

import pytest

from er_verl.engine.faults import Faults, InjectedFault, parse


def test_parse_plan_and_explain_bad_items():
    assert parse("requant@2, round@5,round@9") == {"requant": {2}, "round": {5, 9}}
    assert parse("") == {}
    for bad in ("oom@1", "round@0", "round", "round@x"):
        with pytest.raises(ValueError, match="KIND@N"):
            parse(bad)


def test_only_the_named_events_raise():
    faults = Faults.from_env({"ER_VERL_FAULT": "round@2"})
    faults.check("round")
    with pytest.raises(InjectedFault, match="round fault #2"):
        faults.check("round")
    faults.check("round")
    faults.check("requant")
    assert faults.counts == {"requant": 1, "round": 3}


def test_injected_requant_fault_disables_speculation_until_the_next_good_requant():
    from test_drafter import make

    target, drafter = make()
    drafter.faults = Faults({"requant": {2}})
    assert drafter.refresh(target) is True
    drafter.mark_dirty("resume")
    assert drafter.refresh(target) is False and not drafter.ready
    drafter.mark_dirty("resume")
    assert drafter.refresh(target) is True and drafter.ready
