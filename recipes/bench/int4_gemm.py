"""Which int4 GEMM runs the drafter's Linears fastest at decode batch sizes (GPU host; one process).

Why: on the H200 the drafter's draft step measured 0.70x of a target step at bs 1 (drafter_8b.py), and
a torch.profiler window of a speculative round showed SGLang's AWQ-Marlin GEMMs at 59 us per decoder
layer, about twice what their weight bytes need. This times, per Qwen3-8B Linear shape and M (tokens),
each candidate from a CUDA graph of back-to-back calls:

  bf16          torch F.linear on the bf16 weight (the target's cost)
  marlin        SGLang's AWQ-Marlin apply (what the drafter runs now)
  marlin_nofp32 the same GEMM with use_fp32_reduce=False
  marlin_atomic use_atomic_add=True, use_fp32_reduce=False
  tinygemm      torch's _weight_int4pack_mm (group 128)

Writes JSON (GPU, versions, command, date, us per call) to --out.
"""

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (24576, 4096),
          "down_proj": (4096, 12288), "lm_head": (151936, 4096)}  # name: (N out, K in), Qwen3-8B


def graph_us(fn, calls: int = 20, reps: int = 10) -> float:
    """Mean microseconds per call of ``fn`` replayed from one CUDA graph of ``calls`` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (calls * reps)


def candidates(n: int, k: int, m: int) -> dict:
    from sglang.jit_kernel.gptq_marlin import gptq_marlin_gemm

    from er_verl.draft import marlin

    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    x = torch.randn(m, k, device="cuda").bfloat16()
    layer = marlin.build_awq_marlin_linear(k, n)
    layer.quant_method.process_weights_after_loading(layer)  # SGLang's processing (buffers uninitialised)
    marlin.requantize_linear_(layer, w)  # then the drafter's in-place requant writes the real codes
    qt = marlin.awq_marlin_config().quant_type

    def gemm(fp32: bool, atomic: bool):
        return lambda: gptq_marlin_gemm(x, None, layer.qweight, layer.scales, None, layer.qzeros, layer.g_idx,
                                        layer.g_idx_sort_indices, layer.workspace, qt, size_m=m, size_n=n,
                                        size_k=k, use_atomic_add=atomic, use_fp32_reduce=fp32, is_zp_float=False)

    fns = {"bf16": lambda: torch.nn.functional.linear(x, w),
           "marlin": lambda: layer.quant_method.apply(layer, x),
           "marlin_nofp32": gemm(False, False), "marlin_atomic": gemm(False, True)}
    try:
        packed = torch.randint(0, 255, (n, k // 2), dtype=torch.uint8, device="cuda")
        wp = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
        sz = torch.randn(k // 128, n, 2, device="cuda").bfloat16() * 0.01
        fns["tinygemm"] = lambda: torch.ops.aten._weight_int4pack_mm(x, wp, 128, sz)
    except Exception as exc:  # noqa: BLE001 - a missing op is a result, not a failure
        print(f"tinygemm unavailable: {exc!r}", flush=True)
    return fns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "int4_gemm.json"))
    p.add_argument("--m", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    rows = []
    for name, (n, k) in SHAPES.items():
        for m in args.m:
            fns = candidates(n, k, m)
            ref = fns["marlin"]().float()
            for variant, fn in fns.items():
                try:
                    err = None
                    if variant.startswith("marlin_"):  # same codes: must agree with SGLang's call up to rounding
                        err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
                    us = graph_us(fn)
                except Exception as exc:  # noqa: BLE001
                    print(f"{name} m={m} {variant}: failed {exc!r}", flush=True)
                    continue
                rows.append(dict(layer=name, n=n, k=k, m=m, variant=variant, us=us, rel_err_vs_marlin=err))
                print(f"{name:13s} m={m:3d} {variant:14s} {us:8.1f} us" + ("" if err is None else f"  err {err:.2e}"),
                      flush=True)
            torch.cuda.empty_cache()
    import sglang

    report = dict(what=__doc__.split("\n")[0], gpu=torch.cuda.get_device_name(), date=str(datetime.date.today()),
                  versions=dict(torch=torch.__version__, sglang=sglang.__version__),
                  command=" ".join(["python"] + sys.argv), rows=rows)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
