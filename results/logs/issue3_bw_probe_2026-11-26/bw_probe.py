"""Read-bandwidth probe (experiment): how fast can one kernel stream an int4 Linear's bytes, by access pattern?

Run on the GPU host from the repo root: python3 results/logs/issue3_bw_probe_2026-11-26/bw_probe.py --out $OUT/bw.json
Per Qwen3-8B Linear (int4 bytes = N*K/2), each pattern of bw_probe.cu is timed from a CUDA graph of back-to-back
calls cycling through >= 256 MB of copies (L2-cold), beside the committed decode GEMM at M = 1 and bf16 F.linear.
"""
import argparse, ctypes, datetime, json, os, sys
from pathlib import Path

import torch

here = Path(__file__).resolve().parent
root = here.parents[2]
sys.path[:0] = [str(root), str(root / "recipes" / "bench")]
from int4_gemm import graph_us  # noqa: E402
from er_verl.draft import decode_gemm as dg  # noqa: E402

NAMES = ["chunks_w8_u1", "chunks_w16_u1", "chunks_w8_u4", "chunks_w16_u4", "chunks_w4_u8",
         "contig_u1", "contig_u4", "contig_u8",
         "bulk_c4_8k_x4", "bulk_c4_16k_x4", "bulk_c8_16k_x6", "bulk_c4_32k_x3", "bulk_c2_8k_x8", "bulk_c4_4k_x8"]
SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (24576, 4096), "down_proj": (4096, 12288)}
COLD = 256 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--blocks", type=int, nargs="*", default=[0, 132, 264])
    args = ap.parse_args()
    lib = ctypes.CDLL(str(dg.compiled(here / "bw_probe.cu")))
    lib.bw_read.restype = ctypes.c_int
    lib.bw_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    out = torch.empty(1 << 22, dtype=torch.int32, device="cuda")
    rows = []
    for layer, (n, k) in SHAPES.items():
        nbytes = n * k // 2
        bufs = [torch.randint(0, 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device="cuda") for _ in range(-(-COLD // nbytes))]

        def add(variant, blocks, us, read=nbytes):
            rows.append(dict(layer=layer, bytes=read, variant=variant, blocks=blocks, us=round(us, 3),
                             tb_s=round(read / us / 1e6, 3)))
            print(f"{layer:13s} {variant:16s} b{blocks:<4d} {us:8.2f} us {read / us / 1e6:6.2f} TB/s ({read / nbytes:.3f} of the bytes)", flush=True)

        for vid, name in enumerate(NAMES):
            for blocks in args.blocks:
                it = iter(range(1 << 30))
                read = ctypes.c_size_t(0)

                def call():
                    b = bufs[next(it) % len(bufs)]
                    err = lib.bw_read(vid, b.data_ptr(), nbytes, out.data_ptr(), blocks,
                                      torch.cuda.current_stream().cuda_stream, ctypes.byref(read))
                    if err:
                        raise RuntimeError(f"{name}: cudaError {err}")
                us = graph_us(call, calls=max(20, len(bufs)))
                add(name, blocks, us, read.value)
        # the committed GEMM at M = 1 (random codes; timing only) and bf16 F.linear over the same cycling
        x = torch.randn(1, k, device="cuda").bfloat16()
        sz = [torch.randint(0, 2**31 - 1, (n, k // 128), dtype=torch.int32, device="cuda") for _ in bufs]
        y = torch.empty(1, n, dtype=torch.bfloat16, device="cuda")
        it2 = iter(range(1 << 30))

        def gemm():
            i = next(it2) % len(bufs)
            dg.gemm(x, bufs[i].view(n, k // 8), sz[i], out=y)
        add("decode_gemm_m1", 0, graph_us(gemm, calls=max(20, len(bufs))))
        del bufs, sz
        ws = [(torch.randn(n, k, device="cuda") * 0.02).bfloat16() for _ in range(-(-COLD // (2 * n * k)))]
        it3 = iter(range(1 << 30))
        us = graph_us(lambda: torch.nn.functional.linear(x, ws[next(it3) % len(ws)]), calls=max(20, len(ws)))
        rows.append(dict(layer=layer, bytes=2 * n * k, variant="bf16_linear_m1", blocks=0, us=round(us, 3),
                         tb_s=round(2 * n * k / us / 1e6, 3)))
        print(f"{layer:13s} bf16_linear_m1   {us:8.2f} us {2 * n * k / us / 1e6:6.2f} TB/s", flush=True)
        del ws
        torch.cuda.empty_cache()
    meta = dict(what="read-bandwidth probe by access pattern (bw_probe.cu), int4 Linear bytes of Qwen3-8B, L2-cold",
                gpu=torch.cuda.get_device_name(), date=str(datetime.date.today()), versions=dict(torch=torch.__version__),
                command="python3 results/logs/issue3_bw_probe_2026-11-26/bw_probe.py --out $OUT/bw.json", rows=rows)
    Path(args.out).write_text(json.dumps(meta, separators=(",", ":")))


if __name__ == "__main__":
    main()
