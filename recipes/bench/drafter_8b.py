"""What the self-drafter costs at the Qwen3-8B shape on one GPU (issue 3's "must show").

Measures, in one process and one run:
  * requant time per full update: ``SelfDrafter.requantize_`` over every Linear (median of N);
  * drafter memory: bytes the drafter owns / the target's weight bytes;
  * draft-step time / plain target-step time at several batch sizes: one decode forward of each model
    on the same batch and the same KV cache (the drafter shares it), both replayed from CUDA graphs
    (the drafter's graphs are captured on the target's ModelRunner with the drafter swapped in); if
    capturing the drafter's graphs fails, both are timed eagerly, and the JSON says which.

Setup, like ``sglang.bench_one_batch``: a plain SGLang ModelRunner (no speculation) of a random-init
model (``load_format=dummy``: a config.json only, no checkpoint, full Qwen3 vocabulary by default), and
the drafter built from it with the same code the engine uses (``er_verl.engine.loader``).

    python recipes/bench/drafter_8b.py [--out PATH] [--drafter int4|fp8] [--bs 1 8 32 128]

Writes JSON (GPU, versions, command, date, results) to --out, else $OUT/drafter_8b.json, else ./.
"""

import argparse
import datetime
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from er_verl.bench.decode import make_config  # noqa: E402
from er_verl.models.tiny import SHAPES  # noqa: E402

GOALS = {"requant_ms": 50, "drafter_bytes_ratio": 0.3, "step_ratio_bs_le_8": 0.35}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "drafter_8b.json"))
    p.add_argument("--drafter", choices=("int4", "fp8"), default="int4")
    p.add_argument("--bs", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=151936, help="Qwen3-8B's; the tiny tokenizer's is 512")
    p.add_argument("--requant-reps", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--mem-fraction", type=float, default=0.55)
    p.add_argument("--draft-decode-attn", choices=("auto", "tensor-cores", "cuda-cores"), default="auto",
                   help="the drafter's FlashInfer decode kernel (SGLANG_FLASHINFER_USE_TENSOR_CORE while its backend "
                        "is made); the target keeps SGLang's choice")
    p.add_argument("--profile-bs", type=int, nargs="*", default=[],
                   help="also list each model's kernels per decode step at these batch sizes (torch profiler)")
    return p.parse_args()


def target_runner(model_path: str, args):
    """A plain SGLang ModelRunner with random weights, KV pool, attention backend, decode CUDA graphs."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.entrypoints.engine import _set_envs_and_config
    from sglang.srt.model_executor.cuda_graph_config import Phase
    from sglang.srt.model_executor.model_runner import ModelRunner
    from sglang.srt.server_args import PortArgs, ServerArgs

    server_args = ServerArgs(
        model_path=model_path, load_format="dummy", skip_tokenizer_init=True, device="cuda",
        mem_fraction_static=args.mem_fraction, attention_backend="flashinfer", disable_radix_cache=True,
        speculative_draft_model_quantization={"int4": "awq_marlin", "fp8": "fp8"}[args.drafter],
        disable_prefill_cuda_graph=True,  # decode steps are what is timed; prefill capture costs minutes
        cuda_graph_bs_decode=sorted(args.bs),  # only the timed sizes: each capture pass is minutes shorter
        # The prompts of the largest batch are prefilled in one extend (bs 128 x 256 tokens overflowed 8192).
        chunked_prefill_size=max(args.bs) * args.input_len, max_prefill_tokens=max(args.bs) * args.input_len,
    )
    if server_args.cuda_graph_config is not None:
        server_args.cuda_graph_config[Phase.DECODE].max_bs = max(args.bs)
    _set_envs_and_config(server_args)
    port_args = PortArgs.init_new(server_args)
    runner = ModelRunner(
        model_config=ModelConfig.from_server_args(server_args), mem_fraction_static=args.mem_fraction, gpu_id=0,
        tp_rank=0, tp_size=1, moe_ep_rank=0, moe_ep_size=1, pp_rank=0, pp_size=1,
        nccl_port=port_args.nccl_port, server_args=server_args,
    )
    runner.alloc_memory_pool()
    runner.init_attention_backends()
    runner.init_cuda_graphs()
    return runner, server_args


def build_drafter(runner, server_args, kind: str):
    from sglang.srt.configs.model_config import ModelConfig

    from er_verl.engine import loader

    draft_config = ModelConfig.from_server_args(server_args, is_draft_model=True)
    drafter = loader.build_self_drafter(runner.model, draft_config, runner.load_config, kind)
    loader.materialize_drafter_(drafter, runner.model)
    return drafter


def time_requant(drafter, target, reps: int) -> list[float]:
    drafter.requantize_(target)  # JIT-compiles the repack kernel on a fresh host
    return [drafter.requantize_(target) * 1e3 for _ in range(reps)]


def capture_draft_graphs(runner, draft_model, decode_attn: str = "auto"):
    """Decode CUDA graphs of the drafter on the target's runner (its own attention backend), or None."""
    from sglang.srt.model_executor.runner.decode_cuda_graph_runner import DecodeCudaGraphRunner

    saved = runner.init_new_workspace, runner.model
    env = {"auto": None, "tensor-cores": "true", "cuda-cores": "false"}[decode_attn]
    try:
        before = os.environ.get("SGLANG_FLASHINFER_USE_TENSOR_CORE")
        if env is not None:
            os.environ["SGLANG_FLASHINFER_USE_TENSOR_CORE"] = env
        try:
            backend = runner._get_attention_backend(init_new_workspace=True)
        finally:
            if before is None:
                os.environ.pop("SGLANG_FLASHINFER_USE_TENSOR_CORE", None)
            else:
                os.environ["SGLANG_FLASHINFER_USE_TENSOR_CORE"] = before
        print(f"drafter decode attention: tensor cores {getattr(backend, 'decode_use_tensor_cores', None)}", flush=True)
        runner.model = draft_model
        return DecodeCudaGraphRunner(runner, attn_backend=backend)
    except Exception as exc:  # noqa: BLE001 - fall back to eager timing, recorded in the JSON
        print(f"drafter CUDA-graph capture failed ({exc!r}); timing both models eagerly", flush=True)
        return None
    finally:
        runner.init_new_workspace, runner.model = saved


@torch.inference_mode()
def step_ms(runner, forward_batch, graphs, model, steps: int) -> float:
    """Median ms of one decode forward of ``model`` (through ``graphs`` when not None)."""
    saved = runner.decode_cuda_graph_runner, runner.model
    runner.decode_cuda_graph_runner, runner.model = graphs, model
    try:
        for _ in range(3):
            runner.forward(forward_batch)
        times = []
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runner.forward(forward_batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    finally:
        runner.decode_cuda_graph_runner, runner.model = saved


def kernel_table(runner, forward_batch, graphs, model, steps: int = 10, top: int = 30) -> dict:
    """Per decode step of ``model``: its kernels by name (calls, us), their busy sum and the step's span."""
    from torch.profiler import ProfilerActivity, profile

    saved = runner.decode_cuda_graph_runner, runner.model
    runner.decode_cuda_graph_runner, runner.model = graphs, model
    try:
        runner.forward(forward_batch)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                runner.forward(forward_batch)
            torch.cuda.synchronize()
    finally:
        runner.decode_cuda_graph_runner, runner.model = saved
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    by_name: dict = {}
    for e in kernels:
        calls, us = by_name.get(e.name, (0, 0.0))
        by_name[e.name] = (calls + 1, us + e.device_time)  # device_time: us
    span = (max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)) / steps
    rows = sorted(({"kernel": name[:120], "calls_per_step": c / steps, "us_per_step": us / steps}
                   for name, (c, us) in by_name.items()), key=lambda r: -r["us_per_step"])
    return {"kernels_per_step": len(kernels) / steps, "busy_us_per_step": sum(r["us_per_step"] for r in rows),
            "span_us_per_step": span, "top": rows[:top]}


def print_kernel_table(label: str, table: dict) -> None:
    print(f"{label}: {table['kernels_per_step']:.0f} kernels, busy {table['busy_us_per_step']:.0f} us, span "
          f"{table['span_us_per_step']:.0f} us per step", flush=True)
    for r in table["top"]:
        print(f"  {r['us_per_step']:8.1f} us  {r['calls_per_step']:5.0f} x  {r['kernel'][:100]}", flush=True)


def decode_batch(runner, bs: int, input_len: int, vocab: int):
    """Prefill ``bs`` random prompts with the target, then the ForwardBatch of their next decode step."""
    from sglang.bench_one_batch import extend, prepare_synthetic_inputs_for_latency_test
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    ids = torch.randint(0, vocab, (bs, input_len), generator=torch.Generator().manual_seed(bs)).tolist()
    reqs = prepare_synthetic_inputs_for_latency_test(bs, input_len, custom_inputs=ids)
    next_ids, _, batch = extend(reqs, runner)
    batch.input_ids = next_ids.to(torch.int64)
    batch.prepare_for_decode()
    return ForwardBatch.init_new(batch, runner)


def step_rows(runner, drafter, args) -> list[dict]:
    target_graphs = runner.decode_cuda_graph_runner
    draft_graphs = capture_draft_graphs(runner, drafter.model, args.draft_decode_attn)
    graphs = draft_graphs is not None and target_graphs is not None
    rows = []
    for bs in args.bs:
        fb = decode_batch(runner, bs, args.input_len, args.vocab)
        t_target = step_ms(runner, fb, target_graphs if graphs else None, runner.model, args.steps)
        t_draft = step_ms(runner, fb, draft_graphs if graphs else None, drafter.model, args.steps)
        ratio = t_draft / t_target
        rows.append({"bs": bs, "target_ms": t_target, "draft_ms": t_draft, "ratio": ratio, "cuda_graph": graphs})
        print(f"bs {bs:4d}: target {t_target:.3f} ms, drafter {t_draft:.3f} ms, ratio {ratio:.3f}", flush=True)
        if bs in args.profile_bs:
            for label, g, model in (("target", target_graphs, runner.model), ("drafter", draft_graphs, drafter.model)):
                rows[-1][f"{label}_kernels"] = table = kernel_table(runner, fb, g if graphs else None, model)
                print_kernel_table(f"bs {bs} {label}", table)
        runner.req_to_token_pool.clear()
        runner.token_to_kv_pool_allocator.clear()
    return rows


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("sglang", "sglang-kernel", "flashinfer-python", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    args = parse_args()
    from er_verl.engine.checks import target_weight_bytes

    runner, server_args = target_runner(make_config("qwen3-8b", args.vocab), args)
    drafter = build_drafter(runner, server_args, args.drafter)
    requant = time_requant(drafter, runner.model, args.requant_reps)
    drafter_bytes, target_bytes = drafter.num_bytes(runner.model), target_weight_bytes(runner.model)
    print(f"requant median {statistics.median(requant):.1f} ms; drafter {drafter_bytes / 2**30:.2f} GiB / "
          f"target {target_bytes / 2**30:.2f} GiB = {drafter_bytes / target_bytes:.3f}", flush=True)
    result = {
        "what": "self-drafter costs, Qwen3-8B shape, random weights", "drafter": args.drafter,
        "gpu": torch.cuda.get_device_name(), "versions": versions(),
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "shape": {**SHAPES["qwen3-8b"], "vocab_size": args.vocab, "input_len": args.input_len},
        "requant_ms": {"median": statistics.median(requant), "all": requant, "layers": len(drafter.layers)},
        "drafter_bytes": drafter_bytes, "target_weight_bytes": target_bytes,
        "drafter_bytes_ratio": drafter_bytes / target_bytes,
        "steps": step_rows(runner, drafter, args), "goals": GOALS,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
