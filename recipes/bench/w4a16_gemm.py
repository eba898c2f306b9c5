"""Tune and time er_verl's Triton W4A16 GEMM (er_verl/draft/w4a16.py) against bf16 on Qwen3-8B shapes.

GPU host, torch + triton only. For each Linear shape and M, every config of a small grid is timed from
a CUDA graph that cycles through enough weight copies (>= 256 MB) that no call finds its weights in
the 50 MB L2, as in a real model; the best config is checked against a float32 reference and
reported with its effective weight bandwidth. bf16 F.linear is timed the same way beside it.

    python recipes/bench/w4a16_gemm.py --out $OUT/w4a16_gemm.json
"""

import argparse
import datetime
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from er_verl.draft import w4a16  # noqa: E402

SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (24576, 4096),
          "down_proj": (4096, 12288), "lm_head": (151936, 4096)}  # name: (N out, K in), Qwen3-8B
L2_FLUSH_BYTES = 256 << 20


def graph_us(fns: list, reps: int = 5) -> float:
    """Mean microseconds per call, replaying one CUDA graph that calls each of ``fns`` once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns[:2]:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (len(fns) * reps)


def configs(m: int):
    block_m = 16 if m <= 16 else min(64, triton_next_pow2(m))
    for bn, warps, stages in itertools.product((16, 32, 64, 128), (2, 4, 8), (2, 3, 4, 5)):
        yield dict(BLOCK_M=block_m, BLOCK_N=bn, DOT=True, num_warps=warps, num_stages=stages)
        if m == 1:
            yield dict(BLOCK_M=1, BLOCK_N=bn, DOT=False, num_warps=warps, num_stages=stages)


def triton_next_pow2(v: int) -> int:
    return 1 << (v - 1).bit_length()


def copies_for(nbytes: int) -> int:
    return max(2, -(-L2_FLUSH_BYTES // nbytes))


def bench_shape(name: str, n: int, k: int, ms: list[int], quick: bool) -> list[dict]:
    rows = []
    groups = k // w4a16.GROUP
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
    qw = w4a16.pack_groups(q)
    del q
    s = (torch.rand(groups, n, device="cuda") * 0.01 + 1e-3).bfloat16()
    z = torch.randint(0, 16, (groups, n), device="cuda").bfloat16()
    int4_bytes = qw.numel() * 4 + s.numel() * 2 + z.numel() * 2
    c4 = copies_for(int4_bytes)
    qws = [qw] + [qw.clone() for _ in range(c4 - 1)]
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    c16 = copies_for(w.numel() * 2)
    ws = [w] + [w.clone() for _ in range(c16 - 1)] if n * k * 2 * c16 < (40 << 30) else [w]
    for m in ms:
        x = torch.randn(m, k, device="cuda").bfloat16()
        y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        bf16_us = graph_us([lambda w_=w_: torch.nn.functional.linear(x, w_) for w_ in ws])
        best = None
        for cfg in configs(m):
            if n % cfg["BLOCK_N"]:
                continue
            try:
                us = graph_us([lambda q_=q_: w4a16.w4a16_mm(x, q_, s, z, out=y, config=cfg) for q_ in qws], reps=3)
            except Exception as exc:  # noqa: BLE001 - a config that does not compile is skipped
                print(f"  {cfg}: {type(exc).__name__}", flush=True)
                continue
            if best is None or us < best[0]:
                best = (us, cfg)
            if quick:
                break
        us, cfg = best
        us = graph_us([lambda q_=q_: w4a16.w4a16_mm(x, q_, s, z, out=y, config=cfg) for q_ in qws])
        ref = w4a16.reference_mm(x, qw, s, z)
        err = ((w4a16.w4a16_mm(x, qw, s, z, config=cfg).float() - ref).abs().max() / ref.abs().max()).item()
        default_us = graph_us([lambda q_=q_: w4a16.w4a16_mm(x, q_, s, z, out=y) for q_ in qws])
        row = dict(layer=name, n=n, k=k, m=m, bf16_us=bf16_us, w4a16_us=us, w4a16_default_us=default_us,
                   best_config=cfg, rel_err=err, int4_tb_s=int4_bytes / us / 1e6,
                   bf16_tb_s=n * k * 2 / bf16_us / 1e6, weight_copies=(c4, len(ws)))
        print(f"{name:13s} m={m:3d} bf16 {bf16_us:7.1f} us  w4a16 {us:7.1f} us (default cfg {default_us:7.1f})"
              f"  {row['int4_tb_s']:.2f} TB/s  err {err:.1e}  {cfg}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "w4a16_gemm.json"))
    p.add_argument("--m", type=int, nargs="+", default=[1, 32, 64])
    p.add_argument("--layers", nargs="+", default=list(SHAPES))
    p.add_argument("--quick", action="store_true", help="first config only (a smoke run)")
    args = p.parse_args()
    rows = []
    for name in args.layers:
        n, k = SHAPES[name]
        rows += bench_shape(name, n, k, args.m, args.quick)
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:  # after every shape: a cut-off run keeps what it measured
            json.dump(dict(what=__doc__.split("\n")[0], gpu=torch.cuda.get_device_name(),
                           date=str(datetime.datetime.now(datetime.timezone.utc)),
                           versions=dict(torch=torch.__version__, triton=__import__("triton").__version__),
                           command=" ".join(["python"] + sys.argv), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
