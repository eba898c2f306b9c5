#!/usr/bin/env bash
# On the GPU host (after staging): K=0 as the target's own decode graph (ER_VERL_PLAIN_K0=1).
#   PHASE=1: its GPU test (greedy identical to plain SGLang; distribution at T=1), tiny model;
#   PHASE=2: bench decode, ours (triton) K 0, 3, 4 at alpha 0.9 with plain K=0, next to plain SGLang (triton).
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
case ${PHASE:-1} in
  1)
    timeout 300 python3 -m pytest tests/engine/test_spec_round_gpu.py -q -s -x -k plain_k0 > "$RES/plain_k0_test.log" 2>&1
    grep -E "passed|failed|Error|error|assert|p = |er_verl\[scheduler\]: (drafter|WARNING)" "$RES/plain_k0_test.log" | head -20 ;;
  2)
    ER_VERL_PLAIN_K0=1 timeout 560 python3 -m er_verl.bench.decode --engines plain,ours --bs 1,8,32,128 --k 3,4 \
      --alpha 0.9 --new-tokens 256 --out "$RES/bench_k0.json" --label triton-plaink0 \
      --engine-args '{"attention_backend": "triton"}' 2>&1 | grep -E "tok/s|Error|WARNING a draft|failed|K=0 too" ;;
esac
cp -r "$RES"/. "$OUT"/ 2>/dev/null; ls "$OUT"
