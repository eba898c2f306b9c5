#!/usr/bin/env bash
# On the GPU host (after staging): the drafter and the decode table with the multi-tile decode GEMM (M > 8).
#   PHASE=1: drafter_8b at bs 1 / 8 / 32 / 128, then bench decode's plain SGLang rows (bs 1 / 8 / 32);
#   PHASE=2: bench decode's rows for ours (K 1-4, alpha 0.9 / 0.8 / 0.6), into the same JSON (same host).
# Logs and JSON in $OUT/logs.tgz.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
trap 'tar czf "$OUT/logs.tgz" -C "$RES" .' EXIT
case ${PHASE:-1} in
  1)
    timeout 200 python3 recipes/bench/drafter_8b.py --out "$RES/drafter_8b.json" > "$RES/drafter_8b.txt" 2>&1
    grep -E "^bs|requant|Error" "$RES/drafter_8b.txt"
    timeout 300 python3 -m er_verl.bench.decode --engines plain --k 1 --bs 1,8,32 --alpha 0.9 --new-tokens 256 \
      --out "$RES/bench_decode.json" > "$RES/bench_plain.txt" 2>&1; tail -5 "$RES/bench_plain.txt" ;;
  2)
    timeout 560 python3 -m er_verl.bench.decode --engines ours --k 1,2,3,4 --bs 1,8,32 --alpha 0.9,0.8,0.6 \
      --new-tokens 256 --out "$RES/bench_decode.json" > "$RES/bench_ours.txt" 2>&1
    tail -60 "$RES/bench_ours.txt" ;;
esac
