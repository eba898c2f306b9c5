#!/usr/bin/env bash
# On the GPU host (after staging): checks of the final code.
#   PHASE=1: bench decode, plain SGLang then ours at K=0 / 1 (alpha 0.9), bs 1 / 8 / 32, each in its own process;
#            ours twice, to see whether its first row (K=0, bs 1) depends on being measured first;
#   PHASE=2: the speculative round's GPU tests (greedy equality, forced-alpha length, chi-square).
# Logs and JSON in $OUT/logs.tgz.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
trap 'tar czf "$OUT/logs.tgz" -C "$RES" .' EXIT
case ${PHASE:-1} in
  1)
    for run in plain:a ours:a ours:b; do
      timeout 200 python3 -m er_verl.bench.decode --engines ${run%:*} --k 1 --bs 1,8,32 --alpha 0.9 --new-tokens 256 \
        --out "$RES/k0_${run#*:}.json" > "$RES/k0_${run/:/_}.txt" 2>&1
      grep -E "tok/s" "$RES/k0_${run/:/_}.txt" | sed 's/.*\(ours\|plain\) /\1 /' | tail -6
      [ "$run" = plain:a ] && cp "$RES/k0_a.json" "$RES/k0_b.json"
    done ;;
  2)
    timeout 560 python3 -m pytest tests/engine/test_spec_round_gpu.py -q -s -k "not plain_k0" > "$RES/spec_round_gpu.txt" 2>&1
    grep -E "passed|failed|Error|assert|p = " "$RES/spec_round_gpu.txt" | tail -20 ;;
esac
