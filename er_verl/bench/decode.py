"""``er-verl bench decode``: decode tokens/s of plain SGLang, stock STANDALONE (fp8 copy) and er_verl.

One command, the same (seeded) prompts for every engine, each engine in its own process: ``plain`` (SGLang, no
speculation), ``stock`` (SGLang's STANDALONE with the checkpoint itself as an fp8 draft, acceptance simulated
by SGLang's ``SGLANG_SIMULATE_ACC_LEN``), and ``ours`` (the self-drafter, K per request via
``custom_params["er_k"]``, acceptance forced to α per request via ``custom_params["er_force_alpha"]`` under
the launch opt-in ``ER_VERL_FORCE_ACCEPT``). Random-weight models accept almost nothing, so α is forced: every
row of ``ours`` with α set is tagged ``forced_alpha`` and is a systems measurement, not a quality result.

tok/s = generated tokens / wall time of one ``Engine.generate`` over the whole batch (prefill
included, as in ../shared/design/measurements.md). The JSON is rewritten after every point, and a
rerun with the same ``--out`` skips the points already there (a GPU host can go away mid-run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time

from er_verl.engine.server_args import spec_graph_bs_cap

ENGINES = ("plain", "stock", "ours")
GRAPH_BS = 256
# Speculative engines capture decode graphs only up to ``server_args.spec_graph_bs_cap(K)`` (FlashInfer's
# workspace is pinned to 512 MB for Qwen2/Qwen3; a 6-token verify graph at bs 256 overflowed it on the H200);
# larger batches verify eagerly. Every engine captures graphs only for the benchmarked batch sizes (a boot
# captures one pass per K state).


@contextlib.contextmanager
def environ(**updates):
    """Set (or, with None, unset) environment variables for the block; SGLang's processes inherit them."""
    saved = {k: os.environ.get(k) for k in updates}
    for key, value in updates.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def expected_tokens_per_round(alpha: float, k: int) -> float:
    """E(tokens per round) when each of K drafts is accepted with probability α: (1 − α^(K+1)) / (1 − α)."""
    return float(k + 1) if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def points(kind: str, args) -> list[dict]:
    """The (engine, K, α, bs) points of one engine, in run order."""
    if kind == "plain":
        configs = [dict(k=0, alpha=None)]
    elif kind == "stock":
        configs = [dict(k=args.stock_k, alpha=args.stock_alpha)]
    else:
        configs = [dict(k=0, alpha=None)] + [dict(k=k, alpha=a) for a in args.alpha for k in args.k]
    bs_list = [b for b in args.bs if kind != "stock" or b <= args.stock_max_bs]
    return [dict(engine=kind, bs=b, label=args.label, **c) for c in configs for b in bs_list]


def key(point: dict) -> tuple:
    return point["engine"], point["k"], point["alpha"], point["bs"], point.get("label")


def engine_launch(kind: str, args, model_path: str):
    """(ServerArgs kwargs, environment) of one engine kind."""
    kmax = max(args.k)
    common = dict(
        model_path=model_path, load_format="dummy", skip_tokenizer_init=True, attention_backend="flashinfer",
        disable_radix_cache=True, mem_fraction_static=args.mem_fraction, disable_prefill_cuda_graph=True,
        cuda_graph_bs_decode=[b for b in sorted(args.bs) if b <= GRAPH_BS], max_running_requests=max(args.bs),
        random_seed=0, log_level="error",
    )
    off = dict(ER_VERL_ENGINE=None, ER_VERL_SELF_DRAFT=None, ER_VERL_SPEC_K=None, ER_VERL_FORCE_ACCEPT=None,
               ER_VERL_CONTROL=None,
               SGLANG_SIMULATE_ACC_LEN=None)
    if kind == "plain":
        return common, off
    if kind == "stock":
        acc = expected_tokens_per_round(args.stock_alpha, args.stock_k)
        stock = dict(
            speculative_algorithm="STANDALONE", speculative_draft_model_path=model_path,
            speculative_draft_model_quantization="fp8", speculative_num_steps=args.stock_k,
            speculative_eagle_topk=1, speculative_num_draft_tokens=args.stock_k + 1,
            max_running_requests=min(args.stock_max_bs, max(args.bs)),
            cuda_graph_bs_decode=[b for b in sorted(args.bs) if b <= spec_graph_bs_cap(args.stock_k)],
        )
        return {**common, **stock}, {**off, "SGLANG_SIMULATE_ACC_LEN": f"{acc:.4f}",
                                     "SGLANG_FLASHINFER_WORKSPACE_SIZE": str(2 << 30)}
    from er_verl.config import EfficientConfig
    from er_verl.engine.server_args import self_draft_env, self_draft_server_args

    cfg = EfficientConfig(max_draft_len=kmax, draft_kv_window=args.draft_kv_window,
                          draft_attention=args.draft_attention)
    ours = self_draft_server_args(cfg, model_path, max(args.bs))
    ours["cuda_graph_bs_decode"] = [b for b in sorted(args.bs) if b <= spec_graph_bs_cap(kmax)]
    default_alpha = args.alpha[0] if args.alpha else 1.0
    # A draft window travels in the server's config (ER_VERL_CONTROL), which also starts the controller; every
    # request here names its K (er_k), which the worker honours over the controller.
    return {**common, **ours}, {**off, "ER_VERL_ENGINE": "1", "ER_VERL_FORCE_ACCEPT": str(default_alpha),
                                **self_draft_env(0, cfg if args.draft_kv_window else None)}


def prompts(args) -> list[list[int]]:
    import random

    rng = random.Random(args.seed)
    return [[rng.randrange(1, args.vocab) for _ in range(args.prompt_len)] for _ in range(max(args.bs))]


def measure(engine, prompt_ids: list, point: dict, new_tokens: int) -> dict:
    custom = {}
    if point["engine"] == "ours":
        custom["er_k"] = point["k"]
        if point["alpha"] is not None:
            custom["er_force_alpha"] = point["alpha"]
    sampling = [dict(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True, custom_params=custom or None)
                for _ in prompt_ids]
    start = time.perf_counter()
    outs = engine.generate(input_ids=prompt_ids, sampling_params=sampling)
    wall = time.perf_counter() - start
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    rounds = sum(o["meta_info"].get("spec_verify_ct", 0) or 0 for o in outs)
    row = dict(point, tok_s=tokens / wall, wall_s=wall, tokens=tokens)
    if rounds:
        row["tokens_per_round"] = (tokens - len(outs)) / rounds
    if point["engine"] == "ours" and point["alpha"] is not None:
        tags = outs[0]["meta_info"].get("er_verl_forced_accept")
        row["forced_alpha"] = point["alpha"]
        row["forced_tag_seen"] = tags is not None
    return row


def environment(args, argv, tool: str = "decode") -> dict:
    import torch

    versions = {}
    for name in ("torch", "sglang", "flashinfer", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - report what is importable
            versions[name] = None
    return dict(
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, versions=versions,
        python=platform.python_version(), command=f"er-verl bench {tool} " + " ".join(argv),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        shape=args.shape, prompt_len=args.prompt_len, new_tokens=getattr(args, "new_tokens", None), temperature=1.0,
        er_verl_env={k: v for k, v in sorted(os.environ.items()) if k.startswith("ER_VERL_")},  # knobs set by hand
    )


def summarize(rows: list[dict]) -> dict:
    """Speed-up of every row over plain at the same bs (plain of the row's own label when that run measured one,
    else the unlabelled plain), and the best K per (α, bs) for ours (the key names a label when there is one)."""
    plain = {(r.get("label"), r["bs"]): r["tok_s"] for r in rows if r["engine"] == "plain"}
    best: dict = {}
    for r in rows:
        base = plain.get((r.get("label"), r["bs"]), plain.get((None, r["bs"])))
        if base is not None:
            r["speedup_vs_plain"] = r["tok_s"] / base
        if r["engine"] == "ours" and r["k"] > 0 and "speedup_vs_plain" in r:
            alpha = f"alpha={r['alpha']}" + (f" [{r['label']}]" if r.get("label") else "")
            slot = alpha, r["bs"]
            if slot not in best or r["speedup_vs_plain"] > best[slot]["speedup_vs_plain"]:
                best[slot] = dict(k=r["k"], speedup_vs_plain=r["speedup_vs_plain"], tok_s=r["tok_s"])
    out: dict = {}
    for (alpha, bs), v in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out.setdefault(alpha, {})[str(bs)] = v
    return out


def save(path: str, report: dict) -> None:
    report["best_k"] = summarize(report["rows"])
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def plot(report: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict = {}
    for r in rows:
        if "speedup_vs_plain" not in r:
            continue
        label = r["engine"] if r["engine"] != "ours" else f"ours K={r['k']} α={r['alpha']}"
        label += f" [{r['label']}]" if r.get("label") else ""
        series.setdefault(label, []).append((r["bs"], r["speedup_vs_plain"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                linewidth=2.5 if label in ("plain", "stock") else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s vs plain SGLang")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    env = report.get("environment", {})
    ax.set_title(f"{env.get('shape')} on {env.get('gpu')} (α forced: systems measurement)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def run(args, argv) -> dict:
    import sglang
    from tqdm import tqdm

    report = {"rows": []}
    if os.path.exists(args.out):
        with open(args.out) as f:
            report = json.load(f)
    done = {key(r) for r in report["rows"]}
    kinds = [kind for kind in args.engines if any(key(p) not in done for p in points(kind, args))]
    if len(kinds) > 1:
        report = run_each_in_a_process(kinds, argv, args.out)
    report["environment"] = environment(args, argv)
    if len(kinds) > 1:
        save(args.out, report)
        return report
    model_path = args.model or make_config(args.shape, args.vocab)
    prompt_ids = prompts(args)
    for kind in kinds:
        todo = [p for p in points(kind, args) if key(p) not in done]
        if not todo:
            continue
        kwargs, env = engine_launch(kind, args, model_path)
        kwargs.update(args.engine_args)
        with environ(**env):
            engine = sglang.Engine(**kwargs)
        try:
            measure(engine, prompt_ids[:2], dict(todo[0], bs=2), 8)  # warm-up
            for point in tqdm(todo, desc=kind, file=sys.stdout, mininterval=5):
                row = measure(engine, prompt_ids[: point["bs"]], point, args.new_tokens)
                report["rows"].append(row)
                save(args.out, report)
                tqdm.write(f"{kind} K={point['k']} α={point['alpha']} bs={point['bs']}: {row['tok_s']:.0f} tok/s"
                           + (f", {row['tokens_per_round']:.2f} tokens/round" if "tokens_per_round" in row else ""))
        finally:
            engine.shutdown()
    save(args.out, report)
    return report


def run_each_in_a_process(kinds: list[str], argv: list[str], out: str, runner=None) -> dict:
    """Every engine kind in a fresh process (this command with ``--engines kind``), one after another, all
    writing to ``out``. In one process, an engine measured after another one ran slower on the H200: ours at
    K=0 (the target's own decode graph) 160-169 tok/s at bs 1 after plain SGLang's engine had been shut down,
    182-184 alone; ours at K=4, forced alpha 0.9: 178 / 1064 / 2686 tok/s at bs 1 / 8 / 32 after it, 197 /
    1244 / 3104 alone (``results/issue4_draft_decode_tc_h200.json``)."""
    import subprocess

    runner = runner or subprocess.run
    for kind in kinds:
        command = [sys.executable, "-m", "er_verl.bench.decode", *argv, "--engines", kind]
        print(f"bench decode: {kind} in its own process", flush=True)
        finished = runner(command)
        if finished.returncode:
            raise RuntimeError(f"bench decode: the {kind} engine's process exited with {finished.returncode}; "
                               f"the points measured so far are in {out} (a rerun resumes)")
    with open(out) as f:
        return json.load(f)


def make_config(shape: str, vocab: int, context: int = 4096) -> str:
    """A config-only model folder of ``shape`` (weights come from SGLang's dummy loader), whose context
    (max_position_embeddings) is ``context`` tokens."""
    import tempfile

    from transformers import AutoConfig

    from er_verl.models.tiny import SHAPES

    spec = dict(SHAPES[shape])
    arch = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}[spec["model_type"]]
    config = AutoConfig.for_model(spec.pop("model_type"), vocab_size=vocab, max_position_embeddings=context,
                                  torch_dtype="bfloat16", architectures=[arch], **spec)
    path = tempfile.mkdtemp(prefix=f"{shape}_shape_")
    config.save_pretrained(path)
    return path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engines", default="plain,stock,ours", help="comma list of plain, stock, ours")
    p.add_argument("--model", default=None, help="a model folder; default: a config-only --shape with dummy weights")
    p.add_argument("--shape", default="qwen3-8b", help="qwen3-8b, qwen2.5-0.5b or tiny (without --model)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--bs", default="1,2,4,8,16,32,64,128,256", help="comma list of batch sizes")
    p.add_argument("--k", default="1,2,3,4,5", help="draft lengths of ours (Kmax = the largest)")
    p.add_argument("--alpha", default="0.9,0.8,0.6", help="forced acceptance rates of ours")
    p.add_argument("--stock-k", type=int, default=3)
    p.add_argument("--stock-alpha", type=float, default=0.9)
    p.add_argument("--stock-max-bs", type=int, default=128, help="stock STANDALONE's verify graphs overflow above")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--draft-kv-window", type=int, default=0,
                   help="ours: EfficientConfig.draft_kv_window (0: draft steps attend to the whole context)")
    p.add_argument("--draft-attention", default="flashinfer",
                   help="ours: EfficientConfig.draft_attention (flashinfer or triton: the draft steps' backend)")
    p.add_argument("--mem-fraction", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine-args", default="{}", help="JSON of extra sglang.Engine kwargs for every engine (variants)")
    p.add_argument("--label", default=None, help="tag for this run's rows (a variant next to the default rows)")
    p.add_argument("--out", default="bench_decode.json")
    p.add_argument("--png", default=None, help="plot path (default: --out with .png)")
    p.add_argument("--plot-only", action="store_true", help="only redraw the PNG from --out")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="er-verl bench decode", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return normalize(p, args)


def normalize(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Parse the comma lists; argparse errors (exit 2) name the option, the value and what is allowed."""
    try:
        args.engines = [e for e in args.engines.split(",") if e]
        args.bs, args.k, args.alpha = _ints(args.bs), _ints(args.k), _floats(args.alpha)
    except ValueError as err:
        p.error(f"{err}: --bs and --k take comma-separated integers, --alpha comma-separated floats")
    bad = [e for e in args.engines if e not in ENGINES]
    if bad or not args.engines:
        p.error(f"--engines {','.join(args.engines)!r}: each must be one of {', '.join(ENGINES)}")
    if not args.bs or min(args.bs) < 1:
        p.error(f"--bs {args.bs}: batch sizes must be >= 1")
    if not args.k or min(args.k) < 1 or max(args.k) > 16:
        p.error(f"--k {args.k}: draft lengths must be 1..16")
    try:
        from er_verl.config import parse_efficient_config

        parse_efficient_config({"draft_kv_window": args.draft_kv_window, "draft_attention": args.draft_attention})
    except ValueError as exc:
        p.error(f"--draft-kv-window {args.draft_kv_window} / --draft-attention {args.draft_attention}: {exc}")
    if any(not 0.0 <= a <= 1.0 for a in args.alpha + [args.stock_alpha]):
        p.error(f"--alpha {args.alpha} / --stock-alpha {args.stock_alpha}: probabilities must be in [0, 1]")
    try:
        args.engine_args = json.loads(args.engine_args) if isinstance(args.engine_args, str) else args.engine_args
    except ValueError as err:
        p.error(f"--engine-args {args.engine_args!r}: not JSON ({err})")
    if not isinstance(args.engine_args, dict):
        p.error(f"--engine-args {args.engine_args!r}: expected a JSON object of sglang.Engine kwargs")
    args.png = args.png or os.path.splitext(args.out)[0] + ".png"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return execute(parse(argv), argv)


def execute(args: argparse.Namespace, argv: list[str]) -> int:
    if args.plot_only:
        with open(args.out) as f:
            report = json.load(f)
    else:
        report = run(args, argv)
    plot(report, args.png)
    print(json.dumps(report["best_k"], indent=1))
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
