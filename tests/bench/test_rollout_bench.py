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
                        (["--prompts", "0"], "--prompts 0: must be >= 1")):
        with pytest.raises(SystemExit) as exc:
            rollout.main(argv)
        assert exc.value.code == 2 and words in capsys.readouterr().err
