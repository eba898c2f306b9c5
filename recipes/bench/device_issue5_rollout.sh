#!/usr/bin/env bash
# On the GPU host (after staging): the GRPO-like rollout benchmark, one mode per call so each stays
# under the 600 s command limit (the JSON resumes): MODE=plain|fixed|gate|bandit. Written 2026-11-25;
# first run 2026-11-25 (see results/issue5_bench_rollout_8b_h200.json).
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -f results/issue5_bench_rollout_8b_h200.json ] && cp -n results/issue5_bench_rollout_8b_h200.json "$OUT/rollout_8b.json"
timeout ${T:-570} python3 -m er_verl.cli bench rollout --modes ${MODE:-plain} --prompts ${PROMPTS:-32} --n 8 \
  --max-len ${MAX_LEN:-2048} --ours-attention ${OURS_ATTENTION:-flashinfer} --out "$OUT/rollout_8b.json" \
  > "$OUT/rollout_8b.log" 2>&1
grep -E "^[a-z]+: |rollout_s|vs_plain|off_worst|Error|er_verl\[scheduler\]: (self-drafter|drafter decode|controller)" \
  "$OUT/rollout_8b.log" | tail -30
