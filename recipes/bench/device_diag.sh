#!/usr/bin/env bash
# On the GPU host (after staging): where the self-draft engine's time goes, 8B shape, in phases that each
# fit one device command (PHASE=A|B|C). Logs, JSON and torch-profiler windows under $OUT.
#   A: drafter_8b.py (draft-step / target-step time, requant, bytes) and ours with FlashInfer at bs 1, 8,
#      K 0 and 4, with ER_VERL_PROFILE_EVERY lines and torch.profiler windows (ER_VERL_TORCH_PROFILE);
#   B: plain and ours with SGLang's triton attention backend, same points and windows;
#   C: the drafter's GPU tests (issue 3) and the fused requant check.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bench() {  # label, log, timeout, extra args...
  local label=$1 log=$2 t=$3; shift 3
  ER_VERL_PROFILE_EVERY=100 ER_VERL_TORCH_PROFILE="$OUT/prof_$label:20:8" timeout "$t" \
    python3 -m er_verl.bench.decode --bs 1,8 --k 4 --alpha 0.9 --new-tokens 256 --out "$OUT/diag_8b.json" \
    --label "$label" "$@" >> "$OUT/$log" 2>&1
  grep -E "er_verl\[profile\]|tok/s|WARNING|Error|ran eagerly" "$OUT/$log" | tail -30
}
case ${PHASE:-A} in
  A)
    date; timeout ${T_DRAFT:-300} python3 recipes/bench/drafter_8b.py --out "$OUT/drafter_8b.json" \
      > "$OUT/drafter_8b.log" 2>&1; tail -15 "$OUT/drafter_8b.log"; date
    bench flashinfer diag_a.log ${T_BENCH:-270} --engines ours; date ;;
  B)
    bench triton diag_b.log ${T_BENCH:-560} --engines plain,ours --engine-args '{"attention_backend": "triton"}' ;;
  C)
    timeout ${T_TESTS:-400} python3 -m pytest tests/engine/test_drafter_gpu.py -x -v -s -k "not fp8" \
      > "$OUT/drafter_gpu.log" 2>&1
    grep -E "PASS|FAIL|Error|error|drafter bytes|assert" "$OUT/drafter_gpu.log" | head -40
    timeout ${T_REQUANT:-90} python3 -m er_verl.bench.requant --check --out "$OUT/requant_8b.json" 2>&1 | tail -5 ;;
esac
