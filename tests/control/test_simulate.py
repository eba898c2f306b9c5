"""`simulate`: rollout latency with and without speculation, and its CLI pair."""

import argparse
import json

import numpy as np
import pytest

from er_verl.control.cost_model import CostModel, ModelShape
from er_verl.control.simulate import (AcceptanceSpec, ControllerConfig, add_arguments,
                                      lengths_from_batch_trace, long_tailed_lengths, main, simulate)

COST = CostModel.from_roofline(ModelShape(num_params=8e9))
LENGTHS = long_tailed_lengths(64, 600, np.random.default_rng(0), median_len=120)


def test_batch_trace_and_lengths_agree():
    assert lengths_from_batch_trace([3, 3, 2, 1]) == [2, 3, 4]
    assert lengths_from_batch_trace([]) == []
    with pytest.raises(ValueError, match="non-increasing"):
        lengths_from_batch_trace([1, 2])
    trace = [4, 4, 3, 1, 1]
    a = simulate(batch_trace=trace, cost=COST)
    b = simulate(lengths_from_batch_trace(trace), cost=COST)
    assert a.plain_latency_s == b.plain_latency_s and a.spec_latency_s == b.spec_latency_s
    assert [p.batch_size for p in a.plain_timeline] == trace


def test_plain_latency_is_the_sum_of_plain_steps():
    result = simulate([2, 1, 3], cost=COST)
    assert result.plain_latency_s == pytest.approx(COST.t_ar(3) + COST.t_ar(2) + COST.t_ar(1))
    assert result.num_tokens == 6


def test_high_acceptance_speeds_up_the_tail():
    result = simulate(LENGTHS, cost=COST, acceptance=AcceptanceSpec(0.9, 50.0, 8), seed=1)
    assert result.spec_latency_s < 0.85 * result.plain_latency_s
    assert sum(p.tokens for p in result.spec_timeline) == result.num_tokens
    assert sum(p.tokens for p in result.plain_timeline) == result.num_tokens
    assert any(p.speculate for p in result.spec_timeline)


def test_zero_acceptance_turns_the_gate_off_and_costs_little():
    result = simulate(LENGTHS, cost=COST, acceptance=AcceptanceSpec(0.0, 10.0, 8), seed=1)
    rounds = [p.speculate for p in result.spec_timeline]
    assert rounds.count(True) < 0.1 * len(rounds)               # learned quickly, then off
    assert result.spec_latency_s < 1.05 * result.plain_latency_s


def test_gate_switches_both_ways_within_a_rollout():
    """Speculation is off while the batch is large and on in the tail."""
    lengths = [50] * 200 + [400] * 4
    result = simulate(lengths, cost=COST, acceptance=AcceptanceSpec(0.9, float("inf"), 4))
    first_on = next(i for i, p in enumerate(result.spec_timeline) if p.speculate)
    assert result.spec_timeline[first_on].batch_size <= 4
    assert not result.spec_timeline[0].speculate


@pytest.mark.parametrize("per_request_k", [True, False])
def test_same_seed_same_result(per_request_k):
    config = ControllerConfig(per_request_k=per_request_k)
    a = simulate(LENGTHS, cost=COST, config=config, seed=5)
    b = simulate(LENGTHS, cost=COST, config=config, seed=5)
    assert a.spec_latency_s == b.spec_latency_s and a.spec_timeline == b.spec_timeline


def test_zero_length_and_empty_rollouts():
    empty = simulate([], cost=COST)
    assert empty.plain_latency_s == empty.spec_latency_s == 0.0 and empty.speedup == 1.0
    zeros = simulate([0, 0, 5], cost=COST)
    assert zeros.num_tokens == 5 and len(zeros.plain_timeline) == 5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="exactly one"):
        simulate([1], batch_trace=[1], cost=COST)
    with pytest.raises(ValueError, match="exactly one"):
        simulate(cost=COST)
    with pytest.raises(ValueError, match=">= 0"):
        simulate([-1], cost=COST)
    with pytest.raises(ValueError, match="group_size"):
        AcceptanceSpec(group_size=0)


def test_cli_prints_and_writes_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps(LENGTHS[:16]))
    out = tmp_path / "sim.json"
    args = parser.parse_args(["--lengths", str(lengths), "--json", str(out), "--max-k", "4"])
    assert main(args) == 0
    assert "speedup" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["num_tokens"] == sum(LENGTHS[:16]) and data["spec_timeline"]


def test_cli_accepts_a_saved_calibration(tmp_path):
    COST.save(tmp_path / "cal.json")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--calibration", str(tmp_path / "cal.json"), "--num-prompts", "2",
                              "--group-size", "2", "--max-len", "64", "--median-len", "16"])
    assert main(args) == 0
