"""``er-verl quickstart``: build a small policy offline, GRPO it with efficient_sglang and with sglang,
and compare per-step rollout time, step time and reward.

Stages (each skipped when its output exists, so a rerun resumes):

1. data: the synthetic sums task as verl parquet (``task.py``), or ``--data DIR`` with train/test.parquet;
2. policy: tokenizer + small Qwen2 + SFT (``sft.py``), or ``--model PATH`` (a local folder or hub id);
3. GRPO: ``python -m verl.trainer.main_ppo`` once per rollout backend, same seed and data, with verl's
   console and file loggers (the JSONL is what the report reads);
4. report: a table per backend (mean rollout ``timing_s/gen`` and step ``timing_s/step`` over the steps
   both backends reached, after the first, final reward), the speedup, the speculation metrics verl logged
   for efficient_sglang, ``summary.json`` and ``quickstart.png`` (reward curves; rollout time per step; the
   last rollout's timeline: running batch size per decode call and the calls that speculated, from
   ``ER_VERL_TIMELINE``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROLLOUTS = ("efficient_sglang", "sglang")
METRICS = {"gen": "timing_s/gen", "step": "timing_s/step", "reward": "critic/score/mean"}
SPEC_PREFIXES = ("rollout/er_verl/", "rollout/spec_")  # what the v1-trainer patch logs for efficient_sglang


def grpo_overrides(work: str, model: str, data: str, rollout: str, args) -> list[str]:
    """Hydra overrides of one GRPO run (verl 0.9.1 keys; the efficient ones only for efficient_sglang)."""
    out = [
        "algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=False",
        f"data.train_files={data}/train.parquet", f"data.val_files={data}/test.parquet",
        f"data.train_batch_size={args.prompts}", "data.max_prompt_length=128",
        f"data.max_response_length={args.response_len}", "data.filter_overlong_prompts=True", f"data.seed={args.seed}",
        f"actor_rollout_ref.model.path={model}", "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.optim.lr=1e-5", f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64", "actor_rollout_ref.actor.use_kl_loss=False",
        f"actor_rollout_ref.rollout.name={rollout}", f"actor_rollout_ref.rollout.n={args.n}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64",
        "trainer.n_gpus_per_node=1", "trainer.nnodes=1", f"trainer.total_training_steps={args.steps}",
        "trainer.val_before_train=False", "trainer.test_freq=-1", "trainer.save_freq=-1",
        "trainer.logger=[console,file]", "trainer.project_name=er_verl_quickstart",
        f"trainer.experiment_name={rollout}", f"trainer.default_local_dir={work}/ckpt/{rollout}",
    ]
    if rollout == "efficient_sglang":
        out += ["actor_rollout_ref.rollout.agent.default_agent_loop=efficient_single_turn_agent",
                f"+actor_rollout_ref.rollout.custom.efficient.max_draft_len={args.max_draft_len}"]
    return out + list(args.overrides)


def read_metrics(path: str) -> list[dict]:
    """verl's FileLogger JSONL → [{step, gen, step_s, reward}], one per training step."""
    rows = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            data = rec.get("data", {})
            if METRICS["step"] not in data:
                continue  # e.g. a validation-only record
            rows.append({"step": rec["step"], "gen": data.get(METRICS["gen"]), "step_s": data[METRICS["step"]],
                         "reward": data.get(METRICS["reward"]),
                         "er_verl": {k: v for k, v in data.items() if k.startswith(SPEC_PREFIXES)}})
    return rows


def last_rollout(path: str, gap_s: float = 2.0) -> list[dict]:
    """The decode calls of the last rollout in an ``ER_VERL_TIMELINE`` file ({t, bs, k} per call): the run
    after the last pause longer than ``gap_s`` (training happens between rollouts); t from its start."""
    from er_verl.bench.rollout import read_timeline

    calls = read_timeline(path)
    if not calls:
        return []
    start = 0
    for i in range(1, len(calls)):
        if calls[i]["t"] - calls[i - 1]["t"] > gap_s:
            start = i
    tail = calls[start:]
    return [{**c, "t": c["t"] - tail[0]["t"]} for c in tail]


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per backend: mean gen/step seconds over the steps every backend reached, leaving out the first (JIT,
    warm-up) when there are others; last reward; speedups. So a run cut short limits the steps compared."""
    reached = [{r["step"] for r in rows} for rows in runs.values() if rows]
    common = sorted(set.intersection(*reached)) if reached else []
    compared = set(common[1:] or common)
    out = {}
    for name, rows in runs.items():
        steady = [r for r in rows if r["step"] in compared]
        if not steady:
            continue
        out[name] = {
            "steps": len(rows),
            "steps_compared": sorted(compared),
            "gen_s": sum(r["gen"] or 0.0 for r in steady) / len(steady),
            "step_s": sum(r["step_s"] for r in steady) / len(steady),
            "final_reward": rows[-1]["reward"],
        }
    if set(ROLLOUTS) <= set(out):
        base, ours = out["sglang"], out["efficient_sglang"]
        out["speedup"] = {"gen": base["gen_s"] / ours["gen_s"] if ours["gen_s"] else None,
                          "step": base["step_s"] / ours["step_s"]}
    return out


def plot(runs: dict[str, list[dict]], png: str, timelines: dict[str, list[dict]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_t, ax_l) = plt.subplots(1, 3, figsize=(15, 4))
    for name, rows in runs.items():
        ax_r.plot([r["step"] for r in rows], [r["reward"] for r in rows], marker="o", label=name)
        ax_t.plot([r["step"] for r in rows], [r["gen"] for r in rows], marker="o", label=name)
    for name, calls in (timelines or {}).items():
        if calls:
            ax_l.plot([c["t"] for c in calls], [c["bs"] for c in calls], ".", ms=3, label=f"{name}: running batch")
            spec = [c for c in calls if c["k"] > 0]
            if spec:
                ax_l.scatter([c["t"] for c in spec], [c["bs"] for c in spec], s=12, c="red", zorder=3,
                             label=f"{name}: speculative round ({len(spec)} of {len(calls)} calls)")
    ax_r.set(xlabel="training step", ylabel="mean reward", title="reward")
    ax_t.set(xlabel="training step", ylabel="rollout seconds (timing_s/gen)", title="rollout time")
    ax_l.set(xlabel="seconds into the last rollout", ylabel="running batch (decode call)", title="last rollout timeline")
    for ax in (ax_r, ax_t, ax_l):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def print_table(summary: dict, log=print) -> None:
    log(f"{'backend':18s} {'steps':>5s} {'rollout s':>10s} {'step s':>8s} {'reward':>7s}")
    for name in ROLLOUTS:
        if name in summary:
            s = summary[name]
            reward = "-" if s["final_reward"] is None else f"{s['final_reward']:.3f}"
            log(f"{name:18s} {s['steps']:5d} {s['gen_s']:10.2f} {s['step_s']:8.2f} {reward:>7s}")
    if "speedup" in summary:
        sp = summary["speedup"]
        log(f"efficient_sglang vs sglang: rollout {sp['gen']:.3f}x, step {sp['step']:.3f}x")


def print_spec(runs: dict[str, list[dict]], log=print) -> None:
    """efficient_sglang's speculation metrics per step, as verl logged them (prefix ``rollout/`` dropped)."""
    for row in runs.get("efficient_sglang", []):
        if row.get("er_verl"):
            items = sorted(row["er_verl"].items())
            log(f"step {row['step']}: " + ", ".join(f"{k.removeprefix('rollout/')}={v:.3g}" for k, v in items))


def run_grpo(work: str, model: str, data: str, rollout: str, args) -> str:
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    metrics = os.path.join(logs, f"{rollout}.jsonl")
    if os.path.exists(metrics) and read_metrics(metrics) and len(read_metrics(metrics)) >= args.steps:
        print(f"[quickstart] {rollout}: reusing {metrics}")
        return metrics
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *grpo_overrides(work, model, data, rollout, args)]
    timeline = timeline_path(work, rollout)
    for old in (metrics, timeline):  # a rerun starts both afresh
        if os.path.exists(old):
            os.remove(old)
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=metrics, ER_VERL_TIMELINE=timeline)
    print(f"[quickstart] {rollout}: GRPO {args.steps} steps, log {logs}/{rollout}.log", flush=True)
    with open(os.path.join(logs, f"{rollout}.log"), "w") as out:
        code = subprocess.call(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"[quickstart] verl exited with {code} for rollout {rollout}; see {logs}/{rollout}.log")
    return metrics


def timeline_path(work: str, rollout: str) -> str:
    return os.path.join(work, "logs", f"{rollout}_timeline.jsonl")


def build(args) -> tuple[str, str]:
    """(model path, data dir), building what was not given."""
    from er_verl.quickstart import task

    data = args.data or os.path.join(args.work, "data")
    if not args.data and not os.path.exists(os.path.join(data, "train.parquet")):
        task.write_parquet(data, args.train_size, 256, args.seed)
        print(f"[quickstart] data: {data}")
    model = args.model or os.path.join(args.work, "policy")
    if not args.model and not os.path.exists(os.path.join(model, "model.safetensors")):
        from er_verl.quickstart.sft import build_policy

        info = build_policy(model, task.make_problems(args.train_size, args.seed), steps=args.sft_steps,
                            seed=args.seed)
        print(f"[quickstart] policy: {model} (SFT loss {info['first_loss']:.3f} -> {info['last_loss']:.3f})")
    return model, data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", default="/tmp/er_verl_quickstart", help="scratch folder (reruns resume from it)")
    p.add_argument("--model", default=None, help="use this policy instead of building one")
    p.add_argument("--data", default=None, help="folder with train.parquet and test.parquet in verl's format")
    p.add_argument("--rollouts", default=",".join(ROLLOUTS), help="comma list of efficient_sglang, sglang")
    p.add_argument("--steps", type=int, default=10, help="GRPO training steps per backend")
    p.add_argument("--prompts", type=int, default=64, help="prompts per step (data.train_batch_size)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--response-len", type=int, default=128)
    p.add_argument("--max-draft-len", type=int, default=4)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--sft-steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")


def main(args) -> int:
    rollouts = [r for r in args.rollouts.split(",") if r]
    bad = [r for r in rollouts if r not in ROLLOUTS]
    if bad or not rollouts:
        raise SystemExit(f"--rollouts {args.rollouts!r}: each must be one of {', '.join(ROLLOUTS)}")
    for name in ("steps", "prompts", "n", "response_len", "train_size", "sft_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    os.makedirs(args.work, exist_ok=True)
    model, data = build(args)
    runs = {r: read_metrics(run_grpo(args.work, model, data, r, args)) for r in rollouts}
    summary = summarize(runs)
    print_table(summary)
    print_spec(runs)
    timelines = {r: last_rollout(timeline_path(args.work, r)) for r in rollouts}
    with open(os.path.join(args.work, "summary.json"), "w") as f:
        json.dump({"summary": summary, "runs": runs, "model": model, "data": data, "last_rollout": timelines}, f,
                  indent=1)
    plot(runs, os.path.join(args.work, "quickstart.png"), timelines)
    print(f"[quickstart] wrote {args.work}/summary.json and {args.work}/quickstart.png")
    return 0
