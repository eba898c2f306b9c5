"""er-verl bench rollout without a GPU: the workload, the summary, the plot, argument checks."""

import pytest

from er_verl.bench import rollout


def test_workload_is_seeded_grouped_and_long_tailed():
    reqs = rollout.workload(prompts=64, n=8, max_len=4096, prompt_len=16, vocab=1000, seed=0)
    assert reqs == rollout.workload(64, 8, 4096, 16, 1000, 0) and len(reqs) == 512
    groups = {}
    for r in reqs:
        groups.setdefault(r["group"], []).append(r)
    assert len(groups) == 64 and all(len(g) == 8 for g in groups.values())
    assert all(len({r["alpha"] for r in g}) == 1 and len({tuple(r["ids"]) for r in g}) == 1 for g in groups.values())
    lengths = sorted(r["max_new_tokens"] for r in reqs)
    assert lengths[len(lengths) // 2] < 4096 / 4 and lengths[-1] == 4096  # short median, a tail at the cap
    assert 0.5 <= min(r["alpha"] for r in reqs) and max(r["alpha"] for r in reqs) <= 0.95


def test_alpha_range_moves_acceptance_but_not_lengths():
    wide = rollout.workload(16, 4, 4096, 8, 1000, 0)
    high = rollout.workload(16, 4, 4096, 8, 1000, 0, alphas=rollout.parse_alpha_range("0.85,0.98"))
    assert [r["max_new_tokens"] for r in wide] == [r["max_new_tokens"] for r in high]
    assert [r["ids"] for r in wide] == [r["ids"] for r in high]
    assert min(r["alpha"] for r in high) >= 0.85 and max(r["alpha"] for r in high) <= 0.98
    assert min(r["alpha"] for r in wide) < 0.85  # the default mix reaches below the high range
    assert rollout.parse_alpha_range("0.9,0.9") == (0.9, 0.9) and rollout.parse_alpha_range("a,b") is None


def test_summary_and_timeline_plot(tmp_path):
    tl = [{"t": 10.0 + i, "bs": 100 - 10 * i, "k": 0 if i < 5 else 4} for i in range(10)]
    rows = [{"mode": "plain", "rollout_s": 100.0}, {"mode": "bandit", "rollout_s": 75.0, "timeline": tl}]
    summary = rollout.summarize(rows)
    assert summary["bandit"]["vs_plain"] == pytest.approx(-0.25) and summary["bandit"]["speculating_share"] == 0.5
    rollout.plot(rows, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_bad_arguments_name_what_is_allowed(capsys):
    for argv, words in ((["--modes", "plain,turbo"], "--modes 'plain,turbo'"),
                        (["--fixed-k", "6", "--kmax", "5"], "1 <= fixed-k <= kmax <= 16"),
                        (["--prompts", "0"], "--prompts 0: must be >= 1"),
                        (["--alpha-range", "0.9,0.8"], "must be LO,HI with 0 <= LO <= HI < 1"),
                        (["--alpha-range", "0.9"], "--alpha-range '0.9'"),
                        (["--alpha-range", "0.5,1.0"], "0 <= LO <= HI < 1"),
                        (["--draft-kv-window", "32"], "--draft-kv-window 32 / --draft-attention flashinfer: "
                                                      "actor_rollout_ref.rollout.custom.efficient.draft_kv_window=32 "
                                                      "is invalid"),
                        (["--draft-attention", "fa3"], "efficient.draft_attention='fa3' is invalid: allowed is one of")):
        with pytest.raises(SystemExit) as exc:
            rollout.main(argv)
        assert exc.value.code == 2 and words in capsys.readouterr().err


def test_gate_off_steps_are_compared_with_plain_per_batch_bucket():
    # plain: 10 ms steps at bs 64..127, 5 ms at bs 4..7; ours: 10.1 ms where K = 0 at bs 64.., K = 4 at bs 4..
    plain = [{"t": 0.010 * i, "bs": 100, "k": 0} for i in range(30)]
    plain += [{"t": 0.3 + 0.005 * i, "bs": 5, "k": 0} for i in range(30)]
    ours = [{"t": 0.0101 * i, "bs": 100, "k": 0} for i in range(30)]
    ours += [{"t": 0.303 + 0.02 * i, "bs": 5, "k": 4} for i in range(30)]
    steps = rollout.step_times(ours, k=0)
    assert set(steps) == {64} and len(steps[64]) == 30  # the last K=0 call's step runs into the first K=4 call
    ratios = rollout.off_vs_plain(ours, plain)
    assert set(ratios) == {64} and ratios[64] == pytest.approx(1.01, abs=1e-9)
    slow = [dict(e, t=e["t"] * 1.05) for e in ours]
    assert rollout.off_vs_plain(slow, plain)[64] == pytest.approx(1.0605, abs=1e-3)  # would break the 2% bound
    assert rollout.off_vs_plain(ours, plain, min_steps=31) == {}  # too few steps: no verdict, not a pass
    rows = [{"mode": "plain", "rollout_s": 1.0, "timeline": plain}, {"mode": "gate", "rollout_s": 0.9, "timeline": ours}]
    summary = rollout.summarize(rows)["gate"]
    assert summary["off_step_vs_plain"] == {"64": 1.01} and summary["off_worst"] == pytest.approx(1.01)
    assert "speculating_share" not in rollout.summarize(rows)["plain"]


def test_plain_seconds_per_batch_bucket_add_up_to_its_decode_time():
    plain = [{"t": 0.010 * i, "bs": 100, "k": 0} for i in range(30)]           # 30 steps of 10 ms at bs 64..127
    plain += [{"t": 0.3 + 0.005 * i, "bs": 5, "k": 0} for i in range(31)]      # 30 steps of 5 ms at bs 4..7
    assert rollout.seconds_by_bucket(plain) == {4: pytest.approx(0.15), 64: pytest.approx(0.30)}
    summary = rollout.summarize([{"mode": "plain", "rollout_s": 0.5, "timeline": plain}])
    assert summary["plain"]["seconds_by_bucket"] == {"4": 0.15, "64": 0.3}


def test_warmup_staircase_visits_every_power_of_two_edge():
    sizes = rollout.edge_sizes(512)
    assert sizes[0] == 512 and sizes == sorted(set(sizes), reverse=True) and sizes[-1] == 1
    for p in (2, 4, 64, 128, 256, 512):
        assert {p - 1, p} <= set(sizes), p
    lengths = rollout.staircase(sizes)
    assert len(lengths) == 512
    # the prefill emits each request's first token, decode step t its token t + 1: the batch of decode step t
    # holds the requests with max_new_tokens >= t + 1 and must pass through each size once, largest first
    running = [sum(1 for n in lengths if n >= t + 1) for t in range(1, max(lengths))]
    assert running == sizes
    with pytest.raises(ValueError, match="largest first"):
        rollout.staircase([4, 8])


def test_warmup_forces_k_and_the_workloads_acceptance_only_for_ours():
    reqs = rollout.workload(2, 4, 64, 32, 1000, seed=1)
    ids, sampling = rollout.warmup_requests("gate", reqs, 3, top=8)
    assert len(ids) == len(sampling) == 8 and all(len(i) == 16 for i in ids)
    assert [s["custom_params"] for s in sampling] == [
        {"er_group": "warmup", "er_k": 3, "er_force_alpha": reqs[j]["alpha"]} for j in range(8)]
    assert all(s["ignore_eos"] for s in sampling)
    _, plain = rollout.warmup_requests("plain", reqs, 0, top=8)
    assert all(s["custom_params"] == {"er_group": "warmup"} for s in plain)
    assert [s["max_new_tokens"] for s in plain] == rollout.staircase(rollout.edge_sizes(8))
    # at K > 0 a request emits E(α, K) > 1 tokens per round on average: its length grows by that factor
    longer = [s["max_new_tokens"] - 1 for s in sampling]
    assert all(a > b for a, b in zip(longer, (p["max_new_tokens"] - 1 for p in plain)))
