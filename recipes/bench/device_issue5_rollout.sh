#!/usr/bin/env bash
# On the GPU host (after staging): the GRPO-like rollout benchmark, one mode per call so each stays
# under the 600 s command limit: MODE=plain|fixed|gate|bandit (a comma list runs several). The JSON lives
# in /tmp/er_bench on the host (later calls on the same host resume from it) and is copied to $OUT after
# every call. It starts from the committed results/issue5_bench_rollout_8b_h200.json unless FRESH=1
# (e.g. after an engine change). ALPHAS=LO,HI sets the groups' forced acceptance range (default 0.5,0.95);
# WINDOW=W sets --draft-kv-window (gate/bandit); NAME names the JSON and logs (default rollout_8b; a name
# other than the default never starts from the committed results). Written 2026-11-25; see that JSON for the runs.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/er_bench
name=${NAME:-rollout_8b}
json=/tmp/er_bench/$name.json
[ -z "${FRESH:-}" ] && [ "$name" = rollout_8b ] && [ -f results/issue5_bench_rollout_8b_h200.json ] \
  && cp -n results/issue5_bench_rollout_8b_h200.json "$json"
timeout ${T:-570} python3 -m er_verl.cli bench rollout --modes ${MODE:-plain} --prompts ${PROMPTS:-32} --n 8 \
  --max-len ${MAX_LEN:-2048} --ours-attention ${OURS_ATTENTION:-flashinfer} --alpha-range ${ALPHAS:-0.5,0.95} \
  --draft-kv-window ${WINDOW:-0} \
  --out "$json" > "$OUT/${name}_${MODE:-plain}.log" 2>&1
cp /tmp/er_bench/$name.* "$OUT/" 2>/dev/null
grep -E "^[a-z]+: |rollout_s|vs_plain|off_worst|Error|er_verl\[scheduler\]: (self-drafter|drafter decode|controller)" \
  "$OUT/${name}_${MODE:-plain}.log" | tail -30
