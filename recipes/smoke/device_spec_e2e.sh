#!/usr/bin/env bash
# On the GPU host (after staging): verl GRPO end to end with the self-drafter switched on.
#   PHASE=S: the GSM8K smoke (random-init 0.5B shape) with efficient_sglang, gate=auto and gate=always,
#            3 steps each (every step ends in a weight sync, so the drafter is requantized through verl);
#   PHASE=Q: the offline quickstart (SFT a small policy, GRPO with efficient_sglang and with sglang).
# Logs go straight to $RES (default $OUT, so they come back even when a call runs past its limit).
#   PHASE=Q QS_WORK=DIR: the quickstart's --work (default /tmp/er_qs); outputs are suffixed with its name.
#   PHASE=S NAMES="auto always": which smoke variants to run.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=${RES:-$OUT}; mkdir -p "$OUT" "$RES"
export GSM8K_SRC=${GSM8K_SRC:-.data/gsm8k} WORK=${WORK:-/tmp/er_verl_smoke}

smoke() {  # name, extra Hydra overrides...
  local name=$1; shift
  [ -f "$RES/smoke_$name.done" ] && { echo "== $name: done before"; return; }
  local start=$(date +%s)
  ROLLOUT=efficient_sglang STEPS=${STEPS:-3} timeout ${SMOKE_TIMEOUT:-420} bash recipes/smoke/run_grpo_smoke.sh "$@" \
    > "$RES/smoke_$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$RES/summary.txt"
  grep -oE "step:[0-9]+ .*" "$RES/smoke_$name.log" | tr ' ' '\n' \
    | grep -E "^(step|timing_s/(gen|step|update_weights)|response_length/mean|.*spec.*|er_verl.*)" | paste -sd' ' \
    | tee -a "$RES/summary.txt"
  grep -E "er_verl\[|WARNING|Traceback|Error" "$RES/smoke_$name.log" | sort | uniq -c | sort -rn | head -25 \
    | tee -a "$RES/summary.txt"
  [ $rc = 0 ] && touch "$RES/smoke_$name.done" || tail -80 "$RES/smoke_$name.log"
}

case ${PHASE:-S} in
  S)
    for name in ${NAMES:-auto always}; do
      case $name in
        auto) smoke auto ;;
        always) smoke always +actor_rollout_ref.rollout.custom.efficient.gate=always ;;
        plain) smoke plain +actor_rollout_ref.rollout.custom.efficient.speculate=False ;;
      esac
    done
    ;;
  Q)
    W=${QS_WORK:-/tmp/er_qs}; tag=$(basename "$W")
    ER_VERL_PROFILE_EVERY=${ER_VERL_PROFILE_EVERY:-1000} timeout ${T:-560} python3 -m er_verl.cli quickstart --work "$W" --steps ${STEPS:-5} "$@" 2>&1 \
      | tee -a "$RES/quickstart_$tag.txt" | tail -40
    cp "$W/summary.json" "$RES/summary_$tag.json" 2>/dev/null; cp "$W/quickstart.png" "$RES/quickstart_$tag.png" 2>/dev/null
    tar czf "$RES/qs_logs_$tag.tgz" -C "$W" logs 2>/dev/null
    ;;
esac
nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$RES/summary.txt"
[ "$RES" = "$OUT" ] || tar czf "$OUT/er_res.tgz" --exclude='*.parquet' --exclude='*.safetensors' --exclude='ckpt' -C "$RES" .
true
