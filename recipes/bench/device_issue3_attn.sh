#!/usr/bin/env bash
# On the GPU host (after staging): the drafter's FlashInfer decode attention, tensor-core (SGLang's choice for
# GQA 4) vs CUDA-core kernels, at 256- and 2048-token contexts; each drafter_8b run in its own process.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
trap 'tar czf "$OUT/logs.tgz" -C "$RES" .' EXIT
for len in 256 2048; do
  for attn in tensor-cores cuda-cores; do
    timeout 200 python3 recipes/bench/drafter_8b.py --bs 1 8 32 --input-len $len --draft-decode-attn $attn \
      --requant-reps 3 --out "$RES/drafter_${attn}_${len}.json" > "$RES/drafter_${attn}_${len}.txt" 2>&1
    echo "== $attn $len"; grep -E "^bs|drafter decode attention|Error" "$RES/drafter_${attn}_${len}.txt"
  done
done
