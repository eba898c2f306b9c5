#!/usr/bin/env bash
# On the GPU host: run the GRPO smoke for each backend named in $@ (default: efficient_sglang sglang),
# logs to $OUT/smoke_<backend>.log, a summary of step times to $OUT/smoke_summary.txt.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export GSM8K_SRC=${GSM8K_SRC:-.data/gsm8k} WORK=${WORK:-/tmp/er_verl_smoke}
python3 -c "import verl; from verl.workers.rollout.base import _ROLLOUT_REGISTRY as R; assert ('efficient_sglang','async') in R; print('registry ok')"
for backend in "${@:-efficient_sglang sglang}"; do
  start=$(date +%s)
  ROLLOUT=$backend timeout ${SMOKE_TIMEOUT:-540} bash recipes/smoke/run_grpo_smoke.sh > "$OUT/smoke_$backend.log" 2>&1
  rc=$?
  echo "== $backend rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$OUT/smoke_summary.txt"
  grep -oE "step:[0-9]+ .*" "$OUT/smoke_$backend.log" | tr ' ' '\n' | grep -E "^(step|timing_s/(gen|step|update_actor|update_weights)|response_length/mean|critic/score/mean|rollout/spec)" \
    | paste -sd' ' | tee -a "$OUT/smoke_summary.txt"
  grep -E "er_verl|er_group" "$OUT/smoke_$backend.log" | head -20 | tee -a "$OUT/smoke_summary.txt"
  [ $rc = 0 ] || tail -60 "$OUT/smoke_$backend.log"
done
