"""ER_VERL_FAULT: parsing, counting, and an injected requant fault going through the drafter's fallback."""

import pytest

import torch

from er_verl.engine.faults import Faults, InjectedFault, arm_stack_dump, oom_in_capture, parse
from er_verl.engine.spec_round import usable_k


def test_parse_plan_and_explain_bad_items():
    assert parse("requant@2, round@5,round@9") == {"requant": {2}, "round": {5, 9}}
    assert parse("") == {}
    assert parse("capture@3") == {"capture": {3}}
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
    assert faults.counts == {"requant": 1, "round": 3, "capture": 0}


def test_injected_requant_fault_disables_speculation_until_the_next_good_requant():
    from test_drafter import make

    target, drafter = make()
    drafter.faults = Faults({"requant": {2}})
    assert drafter.refresh(target) is True
    drafter.mark_dirty("resume")
    assert drafter.refresh(target) is False and not drafter.ready
    drafter.mark_dirty("resume")
    assert drafter.refresh(target) is True and drafter.ready


class Model(torch.nn.Module):
    def forward(self, x):
        return x + 1


def test_oom_in_capture_hits_only_the_named_capture_and_only_while_capturing(monkeypatch):
    faults, model = Faults({"capture": {2}}), Model()
    with oom_in_capture(faults, model):  # capture #1: untouched
        assert "forward" not in vars(model)
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    with oom_in_capture(faults, model):  # capture #2: fires
        assert model.forward(torch.zeros(1)).item() == 1  # warm-up outside a capture runs normally
        capturing[0] = True
        with pytest.raises(Exception):  # noqa: B017 - OutOfMemoryError on a GPU; no CUDA device on the CPU
            model(torch.zeros(1))
    assert "forward" not in vars(model) and model(torch.zeros(1)).item() == 1  # restored
    assert faults.counts["capture"] == 2


def test_a_k_whose_graphs_failed_maps_to_the_next_lower_prepared_k():
    prepared = [0, 1, 3]  # K=2's capture failed
    assert [usable_k(k, prepared) for k in range(4)] == [0, 1, 1, 3]
    assert usable_k(5, prepared) == 3


def test_stack_dump_is_off_by_default_and_refuses_a_bad_period(monkeypatch):
    armed = []
    monkeypatch.setattr("faulthandler.dump_traceback_later", lambda s, repeat: armed.append((s, repeat)))
    assert arm_stack_dump({}) is False
    assert arm_stack_dump({"ER_VERL_STACK_DUMP": "45"}) is True and armed == [(45.0, True)]
    for bad in ("0", "soon"):
        with pytest.raises(ValueError, match="positive number of seconds"):
            arm_stack_dump({"ER_VERL_STACK_DUMP": bad})
