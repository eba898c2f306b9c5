"""er-verl bench decode without a GPU: argument checks, the point plan, the summary, the plot, resume."""

import json
import types

import pytest

from er_verl.bench import decode


def test_bad_arguments_name_the_option_and_what_is_allowed(capsys):
    for argv, words in ((["--engines", "plain,fast"], "--engines 'plain,fast'"), (["--bs", "1,x"], "comma-separated"),
                        (["--k", "0"], "--k [0]: draft lengths must be 1..16"),
                        (["--alpha", "1.5"], "probabilities must be in [0, 1]"),
                        (["--engine-args", "[1]"], "expected a JSON object")):
        with pytest.raises(SystemExit) as exc:
            decode.parse(argv)
        assert exc.value.code == 2 and words in capsys.readouterr().err


def test_points_cover_every_engine_k_alpha_and_bs_once():
    args = decode.parse(["--bs", "1,256", "--k", "2,4", "--alpha", "0.9,0.6"])
    ours = decode.points("ours", args)
    assert len(ours) == 2 * (1 + 2 * 2) and len({decode.key(p) for p in ours}) == len(ours)
    assert [p["bs"] for p in decode.points("stock", args)] == [1]  # stock stops at --stock-max-bs 128
    assert decode.expected_tokens_per_round(0.9, 3) == pytest.approx(3.439)
    assert decode.expected_tokens_per_round(1.0, 3) == 4.0


def test_graph_sizes_stop_where_each_engines_verify_graphs_fit():
    """Speculative engines capture decode graphs to 768 / (K+1) tokens' batch (128 at K=5, 192 at K=3),
    plain SGLang to 256; the rest of the benchmarked sizes run eagerly."""
    args = decode.parse(["--bs", "1,128,150,200,256", "--k", "3,5", "--stock-k", "3"])
    graphs = {kind: decode.engine_launch(kind, args, "/m")[0]["cuda_graph_bs_decode"] for kind in decode.ENGINES}
    assert graphs == {"plain": [1, 128, 150, 200, 256], "stock": [1, 128, 150], "ours": [1, 128]}


def test_summary_plot_and_resume(tmp_path):
    out = tmp_path / "b.json"
    rows = [dict(engine="plain", k=0, alpha=None, bs=1, tok_s=100.0),
            dict(engine="ours", k=2, alpha=0.9, bs=1, tok_s=150.0),
            dict(engine="ours", k=4, alpha=0.9, bs=1, tok_s=120.0),
            dict(engine="plain", k=0, alpha=None, bs=1, tok_s=50.0, label="variant"),
            dict(engine="ours", k=3, alpha=0.9, bs=1, tok_s=60.0, label="variant"),   # against the variant's plain
            dict(engine="ours", k=3, alpha=0.9, bs=1, tok_s=80.0, label="solo")]      # no plain of its own
    report = {"rows": rows, "environment": {"shape": "qwen3-8b", "gpu": "x"}}
    decode.save(str(out), report)
    saved = json.loads(out.read_text())
    assert saved["best_k"] == {"alpha=0.9": {"1": {"k": 2, "speedup_vs_plain": 1.5, "tok_s": 150.0}},
                               "alpha=0.9 [solo]": {"1": {"k": 3, "speedup_vs_plain": 0.8, "tok_s": 80.0}},
                               "alpha=0.9 [variant]": {"1": {"k": 3, "speedup_vs_plain": 1.2, "tok_s": 60.0}}}
    decode.plot(saved, str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").stat().st_size > 1000
    args = decode.parse(["--bs", "1", "--k", "2,4", "--alpha", "0.9", "--out", str(out)])
    done = {decode.key(r) for r in saved["rows"]}
    assert [p for p in decode.points("ours", args) if decode.key(p) not in done] == [
        dict(engine="ours", bs=1, label=None, k=0, alpha=None)]


def test_several_engines_run_one_process_each_and_a_failure_says_where_the_results_are(tmp_path):
    out = tmp_path / "b.json"
    report = {"rows": [dict(engine="plain", k=0, alpha=None, bs=1, tok_s=100.0)]}
    decode.save(str(out), report)
    calls = []

    def runner(command):
        calls.append(command)
        return types.SimpleNamespace(returncode=0)

    argv = ["--bs", "1", "--k", "2", "--alpha", "0.9", "--out", str(out)]
    got = decode.run_each_in_a_process(["plain", "ours"], argv, str(out), runner=runner)
    assert got["rows"] == report["rows"]
    assert [c[1:3] for c in calls] == [["-m", "er_verl.bench.decode"]] * 2
    assert [c[3:] for c in calls] == [argv + ["--engines", "plain"], argv + ["--engines", "ours"]]
    assert decode.parse(calls[1][3:]).engines == ["ours"]  # the last --engines wins
    with pytest.raises(RuntimeError, match="ours engine's process exited with 3.*a rerun resumes"):
        decode.run_each_in_a_process(["ours"], argv, str(out), runner=lambda c: types.SimpleNamespace(returncode=3))


def test_environment_records_the_er_verl_knobs_set_by_hand(monkeypatch):
    monkeypatch.setenv("ER_VERL_VERIFY_UNSPLIT_MIN_BS", "1")
    monkeypatch.setenv("OTHER_VAR", "x")
    args = types.SimpleNamespace(shape="qwen3-8b", prompt_len=256, new_tokens=8)
    env = decode.environment(args, ["--bs", "1"])
    assert env["er_verl_env"]["ER_VERL_VERIFY_UNSPLIT_MIN_BS"] == "1" and "OTHER_VAR" not in env["er_verl_env"]
    assert env["command"] == "er-verl bench decode --bs 1"
