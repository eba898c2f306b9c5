"""Attention alone, one Qwen3-8B layer's shapes (32 q heads, 8 KV heads, head dim 128, bf16, page size 1):
FlashInfer's decode kernel (what a plain step and a draft step run) against its causal batch-prefill kernel
over K+1 query rows per request (what our verify pass runs), at long contexts.

Rows: ``verify_prefill_us`` is FlashInfer's default ("auto") prefill backend, which on the H200 is fa3, not what
SGLang runs; ``verify_fa2_splitNone_us`` (``--variants fa2:None``) is SGLang's fa2 planned eagerly;
``verify_graph_us`` is fa2 as the engine runs it (a CUDA graph captured at a context-free layout, re-planned by
FlashInfer's graph planner), ``verify_graph_unsplit_us`` the same graph planned by
``er_verl.engine.verify_plan.UnsplitPlanModule``. A ``*_max_err`` is the max |difference| from the auto row.

Why (issue 5, runs 12-14, 2026-11-26): in the rollout a K=1 verify pass cost ~4 ms more than a plain step at
bs 29-44 and 3.5k-token contexts, but only ~0.3 ms more at bs 32 with 256-token contexts (decode bench). The
KV read per layer is the same for both kernels (the K+1 rows share one request's KV), so any gap here is the
kernel's, and 36 layers multiply it.

    python3 recipes/bench/verify_attention.py --out verify_attention.json   (GPU host; ~1 min)
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics

import torch

QO_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
VARIANTS: list = []  # (FlashInfer prefill backend, fixed_split_size) pairs, from --variants
GRAPH = True  # also time the verify as the engine runs it (CUDA graph, fa2), --no-graph skips


def timed(fn, iters: int = 100, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean µs per call of ``iters`` back-to-back calls."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) * 1e3 / iters)
    return statistics.median(runs)


def case(flashinfer, bs: int, context: int, k: int, window: int | None, workspace) -> dict:
    dev = torch.device("cuda")
    new = k + 1  # the verify pass's tokens per request; their K/V are in the cache before attention runs
    kv_len = context + new
    slots = bs * kv_len + 1024
    k_cache = torch.randn(slots, 1, KV_HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    indices = torch.randperm(slots, device=dev)[:bs * kv_len].to(torch.int32)  # scattered slots, as after churn
    kv_indptr = torch.arange(0, bs + 1, device=dev, dtype=torch.int32) * kv_len
    last = torch.ones(bs, device=dev, dtype=torch.int32)
    row = {"bs": bs, "context": context, "k": k}

    decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    decode.plan(kv_indptr, indices, last, QO_HEADS, KV_HEADS, HEAD_DIM, 1, q_data_type=torch.bfloat16,
                data_type=torch.bfloat16)
    q1 = torch.randn(bs, QO_HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    row["decode_us"] = timed(lambda: decode.run(q1, (k_cache, v_cache)))

    prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
    qo_indptr = torch.arange(0, bs + 1, device=dev, dtype=torch.int32) * new
    prefill.plan(qo_indptr, kv_indptr, indices, last, QO_HEADS, KV_HEADS, HEAD_DIM, 1, causal=True,
                 q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    qv = torch.randn(bs * new, QO_HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    row["verify_prefill_us"] = timed(lambda: prefill.run(qv, (k_cache, v_cache)))
    row["verify_vs_decode"] = row["verify_prefill_us"] / row["decode_us"]
    for backend, split in VARIANTS:  # the same causal verify with a forced KV split and/or another kernel family
        try:
            var = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
            var.plan(qo_indptr, kv_indptr, indices, last, QO_HEADS, KV_HEADS, HEAD_DIM, 1, causal=True,
                     q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, fixed_split_size=split)
            row[f"verify_{backend}_split{split}_us"] = timed(lambda: var.run(qv, (k_cache, v_cache)))
        except Exception as exc:  # noqa: BLE001 - a variant this build does not have: say so in the row
            row[f"verify_{backend}_split{split}_error"] = f"{type(exc).__name__}: {exc}"[:200]

    if GRAPH:  # the engine's setting: a CUDA-graph wrapper captured at a context-free layout, re-planned long
        reference = prefill.run(qv, (k_cache, v_cache))
        for unsplit in (False, True):
            tag = "verify_graph_unsplit" if unsplit else "verify_graph"
            us, out = graph_verify(flashinfer, workspace, unsplit, bs, new, kv_indptr, indices, last, qv, k_cache, v_cache)
            row[f"{tag}_us"], row[f"{tag}_max_err"] = us, (out - reference).abs().max().item()

    if window:  # a windowed draft step (draft_kv_window): min(L, 4 + window) positions per request
        w = min(kv_len, 4 + window)
        w_indptr = torch.arange(0, bs + 1, device=dev, dtype=torch.int32) * w
        w_indices = indices.view(bs, kv_len)[:, -w:].reshape(-1).contiguous()
        wdec = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
        wdec.plan(w_indptr, w_indices, last, QO_HEADS, KV_HEADS, HEAD_DIM, 1, q_data_type=torch.bfloat16,
                  data_type=torch.bfloat16)
        row[f"decode_window{window}_us"] = timed(lambda: wdec.run(q1, (k_cache, v_cache)))
    kv_bytes = bs * kv_len * KV_HEADS * HEAD_DIM * 2 * 2
    row["decode_TBps"] = kv_bytes / row["decode_us"] / 1e6
    row["verify_TBps"] = kv_bytes / row["verify_prefill_us"] / 1e6
    return row


def graph_verify(flashinfer, workspace, unsplit, bs, new, kv_indptr, indices, last, qv, k_cache, v_cache):
    """Capture the causal verify as SGLang does (graph-mode fa2 wrapper planned at a context-free layout), then
    plan the real layout and time the replay: FlashInfer's graph schedule, or with ``unsplit`` the eager one
    (``er_verl.engine.verify_plan.UnsplitPlanModule``). Returns (µs, output)."""
    from er_verl.engine.verify_plan import UnsplitPlanModule

    dev = qv.device
    bufs = dict(qo_indptr_buf=torch.empty(bs + 1, dtype=torch.int32, device=dev),
                paged_kv_indptr_buf=torch.empty(bs + 1, dtype=torch.int32, device=dev),
                paged_kv_indices_buf=torch.empty(indices.numel(), dtype=torch.int32, device=dev),
                paged_kv_last_page_len_buf=torch.empty(bs, dtype=torch.int32, device=dev))
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", use_cuda_graph=True, backend="fa2", **bufs)
    if unsplit:
        UnsplitPlanModule.install(w)
    qo_indptr = torch.arange(0, bs + 1, device=dev, dtype=torch.int32) * new
    plan = dict(causal=True, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    w.plan(qo_indptr, qo_indptr, indices[:bs * new], last, QO_HEADS, KV_HEADS, HEAD_DIM, 1, **plan)
    out = torch.empty_like(qv)
    w.run(qv, (k_cache, v_cache), out=out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(qv, (k_cache, v_cache), out=out)
    w.plan(qo_indptr, kv_indptr, indices, last, QO_HEADS, KV_HEADS, HEAD_DIM, 1, **plan)
    out.zero_()
    return timed(graph.replay), out.clone()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bs", default="1,8,32,64")
    p.add_argument("--context", default="256,1024,3500")
    p.add_argument("--k", default="1,3")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--variants", default="", help="e.g. fa2:256,fa2:1024,fa3:None: verify kernels to time beside")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph verify rows")
    p.add_argument("--out", default="verify_attention.json")
    args = p.parse_args()
    for item in filter(None, args.variants.split(",")):
        backend, split = item.split(":")
        VARIANTS.append((backend, None if split == "None" else int(split)))
    global GRAPH
    GRAPH = not args.no_graph
    import flashinfer

    workspace = torch.empty(512 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    rows = []
    for bs in (int(x) for x in args.bs.split(",")):
        for context in (int(x) for x in args.context.split(",")):
            for k in (int(x) for x in args.k.split(",")):
                row = case(flashinfer, bs, context, k, args.window, workspace)
                rows.append(row)
                print(json.dumps({key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()}),
                      flush=True)
    report = {"gpu": torch.cuda.get_device_name(), "versions": {"torch": torch.__version__,
              "flashinfer": flashinfer.__version__}, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": "python3 recipes/bench/verify_attention.py " + " ".join(
                  f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
                  for k, v in vars(args).items() if k != "out" and v is not False),
              "layer": {"qo_heads": QO_HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "dtype": "bf16"},
              "rows": rows}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
