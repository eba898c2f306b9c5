"""The quickstart's CPU-checkable parts: the task and its reward, SFT, verl overrides, the report."""

import argparse
import json
import os

import pytest

from er_verl.quickstart import run, task


def test_problems_are_seeded_correct_and_scored_by_verls_gsm8k_reward():
    from verl.utils.reward_score.gsm8k import compute_score

    probs = task.make_problems(200, seed=1)
    assert probs == task.make_problems(200, seed=1) and probs != task.make_problems(200, seed=2)
    for p in probs:
        expr = p["question"][len("What is "):-1]
        value = int(p["answer"].split("#### ")[1])
        assert eval(expr) == value >= 0  # noqa: S307 - our own generated "a + b" / "a - b"
        assert compute_score(p["answer"], str(value)) == 1.0
        assert compute_score(p["answer"].replace(f"#### {value}", f"#### {value + 1}"), str(value)) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        task.make_problems(0, seed=0)


def test_parquet_rows_are_verl_rl_rows(tmp_path):
    import pandas as pd

    paths = task.write_parquet(str(tmp_path), 20, 5, seed=0)
    train, test = pd.read_parquet(paths["train"]), pd.read_parquet(paths["test"])
    assert len(train) == 20 and len(test) == 5 and set(train.data_source) == {"openai/gsm8k"}
    assert train.prompt[0][0]["role"] == "user" and "####" in train.prompt[0][0]["content"]
    assert set(train.reward_model[0]) == {"style", "ground_truth"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from er_verl.models.tiny import build_tokenizer

    probs = task.make_problems(300, seed=0)
    from er_verl.data.gsm8k import INSTRUCTION

    return build_tokenizer([f"{p['question']} {p['answer']}" for p in probs] + [INSTRUCTION] * 50, 512,
                           str(tmp_path_factory.mktemp("tok")))


def test_sft_masks_the_prompt_and_lowers_the_loss(tokenizer):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from er_verl.models.tiny import SHAPES
    from er_verl.quickstart.sft import encode, train

    pairs = task.sft_pairs(task.make_problems(64, seed=0))
    ids, mask = encode(tokenizer, pairs[:1])[0]
    response = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert response.startswith(pairs[0][1]) and "What is" not in response
    spec = dict(SHAPES["tiny"])
    config = AutoConfig.for_model(spec.pop("model_type"), vocab_size=len(tokenizer), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    losses = train(model, tokenizer, pairs, steps=60, batch_size=16, lr=3e-3, device="cpu", log_every=0)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def args(**over):
    p = argparse.ArgumentParser()
    run.add_arguments(p)
    a = p.parse_args([])
    for k, v in over.items():
        setattr(a, k, v)
    return a


def test_grpo_overrides_compose_with_verls_trainer_config():
    hydra = pytest.importorskip("hydra")  # noqa: F841
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    for rollout in run.ROLLOUTS:
        overrides = run.grpo_overrides("/w", "/w/policy", "/w/data", rollout, args(overrides=["trainer.total_epochs=3"]))
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose(config_name="ppo_trainer", overrides=overrides)
        assert cfg.actor_rollout_ref.rollout.name == rollout and cfg.trainer.total_epochs == 3
        assert list(cfg.trainer.logger) == ["console", "file"]
        has_custom = "custom" in cfg.actor_rollout_ref.rollout and cfg.actor_rollout_ref.rollout.custom
        assert bool(has_custom) == (rollout == "efficient_sglang")


def test_report_reads_verls_file_logger_and_compares_backends(tmp_path):
    def write(name, gens):
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for step, gen in enumerate(gens, 1):
                spec = {"rollout/er_verl/spec_on_fraction": 0.25, "rollout/spec_accept_rate": 0.5} if name != "sglang" else {}
                f.write(json.dumps({"step": step, "data": {"timing_s/gen": gen, "timing_s/step": gen + 10,
                                                            "critic/score/mean": 0.1 * step, **spec}}) + "\n")
            f.write(json.dumps({"step": len(gens), "data": {"val/score": 1}}) + "\n")
        return run.read_metrics(str(path))

    runs = {"efficient_sglang": write("efficient_sglang", [30, 4, 4]), "sglang": write("sglang", [20, 6, 6])}
    summary = run.summarize(runs)
    assert summary["sglang"]["gen_s"] == 6 and summary["efficient_sglang"]["steps"] == 3
    assert summary["speedup"]["gen"] == pytest.approx(1.5) and summary["speedup"]["step"] == pytest.approx(16 / 14)
    lines = []
    run.print_table(summary, log=lines.append)
    assert "rollout 1.500x" in lines[-1]
    # A run cut short (one step) is compared with the other backend's same step, warm-up included.
    short = run.summarize({"efficient_sglang": runs["efficient_sglang"][:1], "sglang": runs["sglang"]})
    assert short["sglang"]["steps_compared"] == [1] and short["sglang"]["gen_s"] == 20
    assert short["speedup"]["gen"] == pytest.approx(20 / 30)
    assert runs["efficient_sglang"][0]["er_verl"] == {"rollout/er_verl/spec_on_fraction": 0.25,
                                                      "rollout/spec_accept_rate": 0.5}
    assert runs["sglang"][0]["er_verl"] == {}
    lines = []
    run.print_spec(runs, log=lines.append)
    assert lines[0] == "step 1: er_verl/spec_on_fraction=0.25, spec_accept_rate=0.5" and len(lines) == 3
    run.plot(runs, str(tmp_path / "q.png"), {"efficient_sglang": [{"t": 0.0, "bs": 8, "k": 0}, {"t": 0.1, "bs": 4, "k": 2}]})
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_last_rollout_is_the_run_of_decode_calls_after_the_last_pause(tmp_path):
    path = tmp_path / "timeline.jsonl"
    calls = [(100.0, 512, 0), (100.1, 300, 0), (130.0, 512, 0), (130.2, 8, 0), (130.3, 4, 3)]  # two rollouts
    path.write_text("".join(json.dumps({"t": t, "bs": b, "k": k}) + "\n" for t, b, k in calls))
    last = run.last_rollout(str(path))
    assert [c["bs"] for c in last] == [512, 8, 4] and last[0]["t"] == 0.0
    assert last[-1]["t"] == pytest.approx(0.3) and last[-1]["k"] == 3
    assert run.last_rollout(str(tmp_path / "missing.jsonl")) == []


def test_bad_arguments_stop_with_a_sentence(tmp_path):
    with pytest.raises(SystemExit, match="--rollouts 'vllm'"):
        run.main(args(work=str(tmp_path), rollouts="vllm"))
    with pytest.raises(SystemExit, match="--steps 0: must be >= 1"):
        run.main(args(work=str(tmp_path), steps=0))


def test_build_policy_saves_a_loadable_bf16_model_with_its_tokenizer(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from er_verl.quickstart.sft import build_policy, exact_match

    probs = task.make_problems(200, seed=0)
    info = build_policy(str(tmp_path), probs, steps=2, device="cpu", log=lambda *_: None)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == len(tok) == 1024
    assert info["sft_steps"] == 2 and info["last_loss"] > 0
    assert 0.0 <= exact_match(model.float(), tok, probs[:2], device="cpu", max_new_tokens=4) <= 1.0
