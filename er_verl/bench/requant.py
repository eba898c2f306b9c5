"""Requant cost of a whole model's Linears, layer by layer (GPU): ``python -m er_verl.bench.requant``.

Builds one real SGLang AWQ-Marlin layer per distinct (N, K) of the model shape (SGLang's merged
qkv and gate_up included), times ``requantize_linear_`` from a bf16 weight with CUDA events, and
scales by the number of layers. Drafter bytes are the Marlin buffers; target bytes are bf16 Linears.
"""

import argparse
import datetime
import json
import statistics
import sys

# (N_out, K_in) per decoder layer, as SGLang merges them: qkv, o, gate_up, down.
QWEN3_8B = dict(num_layers=36, linears=[(6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288)])


def time_requant(n: int, k: int, repeats: int, check: bool = False) -> tuple[float, int]:
    import torch

    from er_verl.draft import marlin

    layer = marlin.build_awq_marlin_linear(k, n)
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    marlin.load_like_sglang_(layer, w)
    if check:  # the timed path (fused on CUDA, unless --torch-path) must give SGLang's own load path
        ref = {name: t.clone() for name, t in marlin.marlin_buffers(layer).items()}
        marlin.requantize_linear_(layer, (torch.randn(n, k, device="cuda") * 0.02).bfloat16())
        marlin.requantize_linear_(layer, w)
        bad = [name for name, t in marlin.marlin_buffers(layer).items() if not torch.equal(t, ref[name])]
        if bad:
            raise SystemExit(f"--check: requantize_linear_ differs from SGLang's load path for {n}x{k}: {bad}")
    times = []
    for _ in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        marlin.requantize_linear_(layer, w)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    nbytes = sum(t.numel() * t.element_size() for t in marlin.marlin_buffers(layer).values())
    return statistics.median(times[2:]), nbytes


def main(argv=None) -> int:
    import torch
    import sglang

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("--check", action="store_true", help="first check the buffers against SGLang's load path")
    p.add_argument("--torch-path", action="store_true", help="time the eager torch path (USE_FUSED_REQUANT = False)")
    args = p.parse_args(argv)
    from er_verl.draft import marlin

    marlin.USE_FUSED_REQUANT = not args.torch_path
    rows, total_s, draft_bytes, target_bytes = [], 0.0, 0, 0
    for n, k in QWEN3_8B["linears"]:
        sec, nbytes = time_requant(n, k, args.repeats, args.check)
        rows.append({"n": n, "k": k, "requant_ms": sec * 1e3, "marlin_bytes": nbytes, "bf16_bytes": 2 * n * k})
        total_s += sec * QWEN3_8B["num_layers"]
        draft_bytes += nbytes * QWEN3_8B["num_layers"]
        target_bytes += 2 * n * k * QWEN3_8B["num_layers"]
    embed_bytes = 2 * 2 * 151936 * 4096  # untied embed + lm_head of Qwen3-8B, shared with the drafter
    res = {
        "what": "requantize_linear_ over all Linears of a Qwen3-8B-shape model (36 layers), "
        + ("eager torch" if args.torch_path else "fused Triton RTN/AWQ kernel") + " + SGLang repack",
        "checked_against_sglang_load_path": args.check,
        "date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "sglang": sglang.__version__},
        "command": "python -m er_verl.bench.requant " + " ".join(argv or sys.argv[1:]),
        "per_layer": rows, "requant_total_ms": total_s * 1e3,
        "drafter_bytes": draft_bytes, "target_linear_bytes": target_bytes,
        "drafter_over_target_weight_bytes": draft_bytes / (target_bytes + embed_bytes),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        json.dump(res, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
