"""er_verl's W4A16 decode GEMM (er_verl/draft/csrc/w4a16_decode_gemm.cu) vs bf16 and Marlin at decode M (GPU host).

Per Qwen3-8B Linear shape and M, in one process: bf16 F.linear (the target's cost), SGLang's AWQ-Marlin
apply (when sglang imports; the drafter's GEMM before this kernel) and the decode GEMM at a few grid
sizes. Each is timed from a CUDA graph of back-to-back calls, twice: "warm" reuses one weight (it may
sit in L2), "cold" cycles through copies of at least 256 MB so none stays in L2, as in a decode step.
Checks the decode GEMM against x · dequantize(codes)ᵀ in fp32. Writes JSON (GPU, versions, command, date).
"""

import argparse
import concurrent.futures
import datetime
import glob
import itertools
import json
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(here)), here]
from int4_gemm import SHAPES, graph_us  # noqa: E402

from er_verl.draft import decode_gemm as dg, quantize  # noqa: E402

COLD_BYTES = 256 << 20
# Optional other versions of the kernel (recipes/bench/prev_*.cu, e.g. an earlier commit's), timed beside it.
PREV_SOURCES = sorted(glob.glob(os.path.join(here, "prev_*.cu")))


def prev_libraries() -> dict:
    """{variant name: library} built from PREV_SOURCES (compiled concurrently; nvcc takes ~30 s each)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(PREV_SOURCES)))) as pool:
        list(pool.map(dg.compiled, map(dg.Path, PREV_SOURCES)))
    libs = {}
    for path in PREV_SOURCES:
        saved = dg._SOURCE, dg._lib
        dg._SOURCE, dg._lib = dg.Path(path), None
        try:
            libs[os.path.basename(path)[:-3]] = dg.library()
        finally:
            dg._SOURCE, dg._lib = saved
    return libs


def codes_from(w: torch.Tensor):
    q, s, z = quantize.rtn_int4(w, dg.GROUP, scale_dtype=torch.bfloat16)
    return dg.pack(q.t(), s.t().contiguous(), z.t().contiguous())


def codes_for(n: int, k: int):
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    return w, codes_from(w)


def copies(tensors: tuple, nbytes: int) -> list:
    count = max(1, -(-COLD_BYTES // nbytes))
    return [tensors] + [tuple(t.clone() for t in tensors) for _ in range(count - 1)]


def timed(make, sets: list) -> float:
    """us per call from a graph whose calls cycle through `sets` (one set: warm)."""
    cycle = itertools.cycle(sets)
    return graph_us(lambda: make(*next(cycle)), calls=max(20, len(sets)))


def marlin_fn(w: torch.Tensor):
    try:
        from er_verl.draft import marlin
    except Exception as exc:  # noqa: BLE001
        return None, repr(exc)
    try:
        n, k = w.shape
        layer = marlin.build_awq_marlin_linear(k, n)
        layer.quant_method.process_weights_after_loading(layer)
        marlin.requantize_linear_(layer, w)
        return layer, None
    except Exception as exc:  # noqa: BLE001 - no sglang on this host: the row is skipped, the reason printed
        return None, repr(exc)


def bench_shape(name: str, n: int, k: int, ms: list, rows: list, prev: dict) -> None:
    w, (qw, sz) = codes_for(n, k)
    ref_w = dg.dequantize(qw, sz)  # [N, K] fp32 on the GPU
    layer, why = marlin_fn(w)
    if layer is None:
        print(f"marlin unavailable: {why}", flush=True)
    bf16_sets = copies((w,), w.numel() * 2)
    q_sets = copies((qw, sz), qw.numel() * 4 + sz.numel() * 4)
    for m in ms:
        x = torch.randn(m, k, device="cuda").bfloat16()
        y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ ref_w.t()

        def add(variant, make, sets, err=None, **extra):
            for heat, use in (("warm", sets[:1]), ("cold", sets)):
                us = timed(make, use)
                rows.append(dict(layer=name, n=n, k=k, m=m, variant=variant, heat=heat, us=us, rel_err=err, **extra))
                print(f"{name:13s} m={m} {variant:22s} {heat} {us:8.2f} us" + (f"  err {err:.1e}" if err else ""),
                      flush=True)

        add("bf16", lambda wt: torch.nn.functional.linear(x, wt), bf16_sets)
        if layer is not None:
            out = layer.quant_method.apply(layer, x).float()
            add("marlin", lambda _: layer.quant_method.apply(layer, x), [(None,)],
                err=((out - ref).norm() / ref.norm()).item())
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        for blocks in (0, sms, 2 * sms, n // dg.TILE_N):  # resident blocks (auto), 1 or 2 per SM, one per tile
            got = dg.gemm(x, qw, sz, y.fill_(float("nan")), blocks=blocks).float()
            err = ((got - ref).norm() / ref.norm()).item()
            grid = "tiles" if blocks == n // dg.TILE_N else blocks or "auto"
            add(f"decode_gemm_b{grid}", lambda a, b: dg.gemm(x, a, b, y, blocks=blocks), q_sets,
                err=err, blocks=blocks)
        for variant, lib in prev.items():  # same call, that library swapped in while captured
            current, dg._lib = dg._lib, lib
            try:
                err = ((dg.gemm(x, qw, sz, y.fill_(float("nan"))).float() - ref).norm() / ref.norm()).item()
                add(variant, lambda a, b: dg.gemm(x, a, b, y), q_sets, err=err)
            except RuntimeError as exc:  # e.g. a variant whose shared memory does not fit at this M
                print(f"{name:13s} m={m} {variant}: {exc}", flush=True)
            finally:
                dg._lib = current
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dg.requantize_(qw, sz, w)
    start.record()
    for _ in range(5):
        dg.requantize_(qw, sz, w)
    end.record()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip((qw, sz), codes_from(w)))
    rows.append(dict(layer=name, n=n, k=k, variant="requant", us=start.elapsed_time(end) * 1e3 / 5))
    print(f"{name:13s} requant {rows[-1]['us']:8.1f} us (bit-identical to pack(rtn_int4))", flush=True)
    del bf16_sets, q_sets
    torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "w4a16_decode_gemm.json"))
    p.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--layers", nargs="+", default=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    args = p.parse_args()
    dg.library()
    prev = prev_libraries()
    rows: list = []
    for name in args.layers:
        n, k = SHAPES[name]
        bench_shape(name, n, k, args.m, rows, prev)
    report = dict(what=__doc__.split("\n")[0], gpu=torch.cuda.get_device_name(), date=str(datetime.date.today()),
                  versions=dict(torch=torch.__version__), command=" ".join(["python"] + sys.argv), rows=rows)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print_layer_sums(rows)


def print_layer_sums(rows: list) -> None:
    """Per M and heat: the best us of each variant family summed over the layers (one decoder layer)."""
    best: dict = {}
    requant = sum(r["us"] for r in rows if r["variant"] == "requant")
    print(f"requant of one decoder layer's Linears {requant:.1f} us; x36 layers (Qwen3-8B) {36 * requant / 1e3:.1f} ms")
    for r in rows:
        if r["variant"] == "requant":
            continue
        key = (r["m"], r["heat"], r["variant"].split("_b")[0], r["layer"])
        best[key] = min(best.get(key, float("inf")), r["us"])
    sums: dict = {}
    for (m, heat, family, _), us in best.items():
        sums[(m, heat, family)] = sums.get((m, heat, family), 0.0) + us
    for (m, heat, family), us in sorted(sums.items()):
        print(f"decoder layer m={m} {heat} {family:12s} {us:7.1f} us", flush=True)


if __name__ == "__main__":
    main()
