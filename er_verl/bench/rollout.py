"""``er-verl bench rollout``: one GRPO-like rollout, timed end to end, for each way of deciding K.

Workload (seeded): P prompts × n samples; each group (prompt) gets its own acceptance α_g and every
sample its own output length from a long-tailed distribution (most short, a few near ``--max-len``),
so the running batch shrinks to a tail of long sequences, as in RL. Random-weight models accept almost
nothing, so α_g is forced per request (``custom_params["er_force_alpha"]`` under the launch opt-in
``ER_VERL_FORCE_ACCEPT``): a systems measurement of the controller, tagged as such in the JSON.

Modes, one engine each: ``plain`` (SGLang), ``fixed`` (ours, every batch K = ``--fixed-k``), ``gate``
(ours, the controller's gate with its best batch K, no bandit) and ``bandit`` (gate + per-group
Thompson bandit). Every mode writes a timeline (``ER_VERL_TIMELINE``: per decode call, time, running
batch size, K; plain SGLang's through one hook, ``plugin.register``); the PNG plots ours per mode under
the rollout times, and the summary compares, per batch-size bucket, the step time of ours where the
gate was off (K = 0) with plain SGLang's step time (the issue's bound: at most 2% slower).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

from er_verl.bench import decode
from er_verl.config import parse_efficient_config

MODES = ("plain", "fixed", "gate", "bandit")


def workload(prompts: int, n: int, max_len: int, prompt_len: int, vocab: int, seed: int,
             alphas: tuple[float, float] = (0.5, 0.95)) -> list[dict]:
    """One dict per request: prompt ids, group, α of its group, max_new_tokens (long-tailed)."""
    rng = random.Random(seed)
    out = []
    for g in range(prompts):
        ids = [rng.randrange(1, vocab) for _ in range(prompt_len)]
        alpha = rng.uniform(*alphas)
        for _ in range(n):
            # Pareto tail: median ~max_len/8, a few samples at max_len.
            length = min(max_len, int(max_len / 8 * rng.paretovariate(1.5)))
            out.append({"ids": ids, "group": f"g{g}", "alpha": round(alpha, 3), "max_new_tokens": max(8, length)})
    return out


def parse_alpha_range(text: str) -> tuple[float, float] | None:
    """"LO,HI" -> (LO, HI) with 0 <= LO <= HI < 1, else None. The bench's per-group acceptance is drawn from
    U(LO, HI); the lengths do not depend on it (the same random draws scale to any range)."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        return None
    return (lo, hi) if 0.0 <= lo <= hi < 1.0 else None


def edge_sizes(top: int, reach: int = 2) -> list[int]:
    """Batch sizes within ``reach`` of every power of two up to ``top``, and ``top`` itself, largest first.
    Kernels that SGLang's speculative path launches with ``next_power_of_2(bs)`` (or of bs + 1) as a
    compile-time constant are JIT-compiled the first time a batch crosses each such edge."""
    sizes = {top}
    p = 1
    while p <= top:
        sizes.update(s for s in range(p - reach, p + reach + 1) if 1 <= s <= top)
        p *= 2
    return sorted(sizes, reverse=True)


def staircase(sizes: list[int]) -> list[int]:
    """max_new_tokens per request so that a batch of ``sizes[0]`` requests, one token per step, decodes at
    each size in ``sizes`` (descending) once: request j stays until the batch is down to j requests."""
    if not sizes or any(a <= b for a, b in zip(sizes, sizes[1:])) or sizes[-1] < 1:
        raise ValueError(f"sizes {sizes!r}: expected distinct batch sizes >= 1, largest first")
    return [1 + sum(1 for s in sizes if s > j) for j in range(sizes[0])]


def warmup_requests(mode: str, reqs: list[dict], k: int, top: int, prompt_len: int = 16) -> tuple[list, list]:
    """(input ids, sampling params) of one warm-up pass at draft length ``k`` (``er_k``; 0 = plain steps):
    a staircase through :func:`edge_sizes` of ``top`` so that the JIT compiles of every batch-size edge,
    one-time per process, happen before the timed rollout, as in every verl rollout after the first.
    Request j of ours keeps the forced α of the workload's request j (the controller learns the same
    acceptance a previous rollout of this workload would have taught it); at K > 0 its length is scaled by
    its expected tokens per round E(α, K), so the batch passes the same sizes on average."""
    from er_verl.control.acceptance import expected_tokens

    steps = [n - 1 for n in staircase(edge_sizes(top))]
    ids, sampling = [], []
    for j, n in enumerate(steps):
        r = reqs[j % len(reqs)]
        custom = {"er_group": "warmup"}
        if mode != "plain":
            custom.update(er_k=k, er_force_alpha=r["alpha"])
        per_round = float(expected_tokens(r["alpha"], k)) if mode != "plain" and k > 0 else 1.0
        ids.append(r["ids"][:prompt_len])
        sampling.append(dict(max_new_tokens=1 + round(per_round * n), temperature=1.0, ignore_eos=True,
                             custom_params=custom))
    return ids, sampling


def engine_launch(mode: str, args, model_path: str, timeline: str):
    """(sglang.Engine kwargs, environment) of one mode."""
    from er_verl.config import EfficientConfig
    from er_verl.engine.server_args import graph_sizes, self_draft_env, self_draft_server_args

    requests = args.prompts * args.n
    common = dict(
        model_path=model_path, load_format="dummy", skip_tokenizer_init=True, attention_backend="flashinfer",
        disable_radix_cache=True, mem_fraction_static=args.mem_fraction, disable_prefill_cuda_graph=True,
        max_running_requests=requests, random_seed=args.seed, log_level="error",
        cuda_graph_max_bs_decode=min(decode.GRAPH_BS, requests),
    )
    off = dict(ER_VERL_ENGINE=None, ER_VERL_SELF_DRAFT=None, ER_VERL_SPEC_K=None, ER_VERL_FORCE_ACCEPT=None,
               ER_VERL_CONTROL=None, ER_VERL_TIMELINE=None, ER_VERL_PLAIN_GRAPH_MAX_BS=None)
    if mode == "plain":  # SGLang untouched but for the timeline hook (plugin.register)
        return common, {**off, "ER_VERL_TIMELINE": timeline}
    cfg = EfficientConfig(max_draft_len=args.kmax, gate="auto", bandit=mode == "bandit", seed=args.seed,
                          draft_kv_window=args.draft_kv_window, draft_attention=args.draft_attention)
    ours = self_draft_server_args(cfg, model_path, requests)
    ours["attention_backend"] = args.ours_attention
    # The efficient_sglang server's default graph sizes: drafter / verify graphs within FlashInfer's workspace,
    # K=0 graphs to K0_GRAPH_MAX_BS (past plain SGLang's default, which the plain mode keeps).
    graph_args, graph_env = graph_sizes(args.kmax, requests, {})
    ours.update(graph_args)
    env = {**off, "ER_VERL_ENGINE": "1", "ER_VERL_FORCE_ACCEPT": "0.5", "ER_VERL_TIMELINE": timeline, **graph_env}
    if mode == "fixed":
        env.update(self_draft_env(args.fixed_k))
    else:
        env.update(self_draft_env(None, cfg))
    return {**common, **ours}, env


def run_mode(mode: str, args, model_path: str, reqs: list[dict], out_dir: str) -> dict:
    import sglang

    from er_verl.engine.server_args import spec_graph_bs_cap

    timeline = os.path.join(out_dir, f"timeline_{mode}.jsonl")
    if os.path.exists(timeline):
        os.remove(timeline)
    kwargs, env = engine_launch(mode, args, model_path, timeline)
    with decode.environ(**env):
        engine = sglang.Engine(**kwargs)
    try:
        # Warm-up over every prompt: JIT kernels for the large prefill and decode batches compile here
        # (once ~80 s inside the first timed rollout of a fresh host), not in the timed run.
        engine.generate(input_ids=[r["ids"] for r in reqs], sampling_params={"max_new_tokens": 4})
        # Then a staircase through every power-of-two batch edge per K (plain: K = 0 only): run 7 lost ~1.2 s
        # inside the timed rollout to Triton compiles of SGLang's kernels specialised on next_power_of_2(bs).
        # Ours' controller keeps what it measured here (step times, the workload's acceptance), as it keeps
        # a previous rollout's in verl; the timed rollout's groups are new to it.
        for k in [0] if mode == "plain" else range(args.kmax + 1):
            top = len(reqs) if k == 0 else min(len(reqs), spec_graph_bs_cap(args.kmax))
            ids, sampling = warmup_requests(mode, reqs, k, top)
            engine.generate(input_ids=ids, sampling_params=sampling)
        sampling = []
        for r in reqs:
            custom = {"er_group": r["group"]}
            if mode != "plain":
                custom["er_force_alpha"] = r["alpha"]
            sampling.append(dict(max_new_tokens=r["max_new_tokens"], temperature=1.0, ignore_eos=True,
                                 custom_params=custom))
        start, start_clock = time.perf_counter(), time.time()
        outs = engine.generate(input_ids=[r["ids"] for r in reqs], sampling_params=sampling)
        wall = time.perf_counter() - start
    finally:
        engine.shutdown()
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    row = {"mode": mode, "rollout_s": wall, "tokens": tokens, "tok_s": tokens / wall,
           "attention_backend": kwargs["attention_backend"], "timeline": read_timeline(timeline, after=start_clock)}
    if mode != "plain":
        row["forced_alpha_per_group"] = True
    return row


def read_timeline(path: str, after: float = 0.0) -> list[dict]:
    """The timeline's decode calls at or after wall-clock ``after`` (the warm-up's are dropped)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["t"] >= after]


def step_times(timeline: list[dict], k: int | None = None) -> dict[int, list[float]]:
    """{batch-size bucket (power of two): seconds from each decode call to the next}, for calls at draft
    length ``k`` (None: all). A call's interval is its step: the wall time until the next call started."""
    out: dict[int, list[float]] = {}
    for now, nxt in zip(timeline, timeline[1:]):
        if k is None or now["k"] == k:
            out.setdefault(1 << (now["bs"].bit_length() - 1), []).append(nxt["t"] - now["t"])
    return out


def off_vs_plain(mode_tl: list[dict], plain_tl: list[dict], min_steps: int = 20) -> dict[int, float]:
    """{bucket: median step of the mode's K = 0 calls (gate off) / median plain step} where both have
    ``min_steps`` steps. The issue's bound: none above 1.02."""
    ours, plain = step_times(mode_tl, k=0), step_times(plain_tl)
    return {
        b: statistics.median(ours[b]) / statistics.median(plain[b])
        for b in sorted(ours)
        if len(ours[b]) >= min_steps and len(plain.get(b, ())) >= min_steps
    }


def seconds_by_bucket(timeline: list[dict]) -> dict[int, float]:
    """{batch-size bucket: decode seconds spent there}. For plain decoding this bounds what speculation can
    save: a rollout spending s_b seconds at bucket b with speedup x_b there takes Σ s_b / x_b."""
    return {b: sum(v) for b, v in sorted(step_times(timeline).items())}


def summarize(rows: list[dict]) -> dict:
    """Rollout time of each mode and its change vs plain; share of decode calls that speculated; where
    the gate was off, each batch-size bucket's step time vs plain's (needs both timelines); plain's decode
    seconds per batch-size bucket."""
    plain = next((r for r in rows if r["mode"] == "plain"), None)
    out = {}
    for r in rows:
        s = {"rollout_s": r["rollout_s"]}
        if plain:
            s["vs_plain"] = r["rollout_s"] / plain["rollout_s"] - 1.0
        tl = r.get("timeline") or []
        if tl and r["mode"] == "plain":
            s["seconds_by_bucket"] = {str(b): round(v, 2) for b, v in seconds_by_bucket(tl).items()}
        if tl and r["mode"] != "plain":
            s["speculating_share"] = sum(1 for e in tl if e["k"] > 0) / len(tl)
            if plain and plain.get("timeline"):
                ratios = off_vs_plain(tl, plain["timeline"])
                s["off_step_vs_plain"] = {str(b): round(v, 4) for b, v in ratios.items()}
                s["off_worst"] = max(ratios.values(), default=None)
        out[r["mode"]] = s
    return out


def plot(rows: list[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_tl = [r for r in rows if r.get("timeline") and r["mode"] != "plain"]
    fig, axes = plt.subplots(len(with_tl) + 1, 1, figsize=(9, 2.6 * (len(with_tl) + 1)), squeeze=False)
    ax = axes[0][0]
    ax.bar([r["mode"] for r in rows], [r["rollout_s"] for r in rows])
    ax.set_ylabel("rollout seconds")
    for ax, r in zip((a[0] for a in axes[1:]), with_tl):
        t0 = r["timeline"][0]["t"]
        t = [e["t"] - t0 for e in r["timeline"]]
        ax.plot(t, [e["bs"] for e in r["timeline"]], color="tab:blue", label="running batch")
        ax.set_ylabel("batch size")
        k_ax = ax.twinx()
        k_ax.step(t, [e["k"] for e in r["timeline"]], color="tab:red", where="post", label="K (0 = off)")
        k_ax.set_ylabel("K")
        ax.set_title(f"{r['mode']}: {r['rollout_s']:.1f} s", fontsize=9)
    axes[-1][0].set_xlabel("seconds into the rollout")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modes", default=",".join(MODES), help="comma list of plain, fixed, gate, bandit")
    p.add_argument("--model", default=None, help="a model folder; default: config-only --shape, dummy weights")
    p.add_argument("--shape", default="qwen3-8b")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-len", type=int, default=4096)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--kmax", type=int, default=5)
    p.add_argument("--fixed-k", type=int, default=3)
    p.add_argument("--mem-fraction", type=float, default=0.6)
    p.add_argument("--ours-attention", default="flashinfer", choices=("flashinfer", "triton"),
                   help="er_verl's attention backend (plain SGLang keeps flashinfer). On the H200 8B run, triton "
                        "took ~210 ms per step at bs 400-512 and did not finish")
    p.add_argument("--draft-kv-window", type=int, default=0,
                   help="gate/bandit modes: EfficientConfig.draft_kv_window (0: drafts attend to the whole context)")
    p.add_argument("--draft-attention", default="flashinfer",
                   help="gate/bandit modes: EfficientConfig.draft_attention (flashinfer or triton)")
    p.add_argument("--alpha-range", default="0.5,0.95", metavar="LO,HI",
                   help="each group's forced acceptance is drawn from U(LO, HI) (0 <= LO <= HI < 1); the default is "
                        "a wide mix, the paper's W4 self-drafters accept ~0.94 (~0.85-0.98)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_rollout.json")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="er-verl bench rollout", description=__doc__.splitlines()[0])
    add_arguments(p)
    return execute(p, p.parse_args(argv), argv)


def execute(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes {args.modes!r}: each must be one of {', '.join(MODES)}")
    if not 1 <= args.fixed_k <= args.kmax <= 16:
        p.error(f"--fixed-k {args.fixed_k} / --kmax {args.kmax}: need 1 <= fixed-k <= kmax <= 16")
    for name in ("prompts", "n", "max_len", "prompt_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    try:  # the config's own check (one place for the allowed range)
        parse_efficient_config({"draft_kv_window": args.draft_kv_window, "draft_attention": args.draft_attention})
    except ValueError as exc:
        p.error(f"--draft-kv-window {args.draft_kv_window} / --draft-attention {args.draft_attention}: {exc}")
    alphas = parse_alpha_range(args.alpha_range)
    if alphas is None:
        p.error(f"--alpha-range {args.alpha_range!r}: must be LO,HI with 0 <= LO <= HI < 1")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    report = {"rows": []}
    if os.path.exists(args.out):
        with open(args.out) as f:
            report = json.load(f)
    report["environment"] = decode.environment(args, argv, tool="rollout")
    reqs = workload(args.prompts, args.n, args.max_len, args.prompt_len, args.vocab, args.seed, alphas)
    model_path = args.model or decode.make_config(args.shape, args.vocab, max(4096, args.prompt_len + args.max_len))
    for mode in modes:
        if any(r["mode"] == mode for r in report["rows"]):
            continue
        report["rows"].append(run_mode(mode, args, model_path, reqs, out_dir))
        report["rows"][-1]["command"] = report["environment"]["command"]  # modes may come from several calls
        report["rows"][-1]["alpha_range"] = list(alphas)
        if mode in ("gate", "bandit"):
            report["rows"][-1]["draft_kv_window"] = args.draft_kv_window
            report["rows"][-1]["draft_attention"] = args.draft_attention
        report["summary"] = summarize(report["rows"])
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"{mode}: {report['rows'][-1]['rollout_s']:.1f} s", flush=True)
    plot(report["rows"], os.path.splitext(args.out)[0] + ".png")
    print(json.dumps(report.get("summary", {}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
