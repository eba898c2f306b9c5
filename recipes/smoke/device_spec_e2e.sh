#!/usr/bin/env bash
# On the GPU host (after staging): verl GRPO end to end with the self-drafter switched on.
#   PHASE=S: the GSM8K smoke (random-init 0.5B shape) with efficient_sglang, gate=auto and gate=always,
#            3 steps each (every step ends in a weight sync, so the drafter is requantized through verl);
#   PHASE=Q: the offline quickstart (SFT a small policy, GRPO with efficient_sglang and with sglang);
#   PHASE=8: the 8B-shape systems run of issue 6 (first run 2026-11-25: results/issue6_e2e_8b_h200.json): a random
#            Qwen3-8B-shape policy (32k offline tokenizer), GSM8K prompts, the same data and seed for ROLLOUTS
#            (default both), response lengths FORCED long-tailed (ER_VERL_FORCE_RESPONSE_LEN, default 400:1.0, cap
#            MAX_RESP=2048) and acceptance FORCED (ER_VERL_FORCE_ACCEPT, default 0.8; efficient_sglang only); the actor
#            trains with plain SGD (no optimizer state, so an 8B actor fits beside SGLang on one H200). One backend
#            per call (ROLLOUTS=efficient_sglang, then ROLLOUTS=sglang); logs and verl's metrics JSONL under $RES.
#            At the defaults (TRAIN_BS=32 prompts x 8, MICRO=2) a step took 150-216 s and efficient_sglang's start-up
#            5.6 min, so one 10-minute call held one step: TRAIN_BS=16 (and a larger MICRO, if memory allows) fits two.
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
  8)
    export ER_VERL_FORCE_RESPONSE_LEN=${FORCE_LEN:-400:1.0} ER_VERL_FORCE_ACCEPT=${FORCE_ALPHA:-0.8}
    FORCE_LEN_USED=$ER_VERL_FORCE_RESPONSE_LEN
    for r in ${ROLLOUTS:-efficient_sglang sglang}; do
      [ -f "$RES/e2e8b_$r.done" ] && { echo "== $r: done before"; continue; }
      start=$(date +%s)
      WORK=${WORK8:-/tmp/er_verl_8b} SHAPE=qwen3-8b VOCAB=32768 ROLLOUT=$r STEPS=${STEPS:-3} \
        VERL_FILE_LOGGER_PATH="$RES/e2e8b_$r.jsonl" timeout ${T:-560} bash recipes/smoke/run_grpo_smoke.sh \
        data.train_batch_size=${TRAIN_BS:-32} data.max_response_length=${MAX_RESP:-2048} actor_rollout_ref.rollout.n=8 \
        actor_rollout_ref.actor.optim.optimizer=SGD actor_rollout_ref.actor.ppo_mini_batch_size=${TRAIN_BS:-32} \
        actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=${MICRO:-2} actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4 \
        actor_rollout_ref.model.enable_gradient_checkpointing=True actor_rollout_ref.rollout.gpu_memory_utilization=0.35 \
        actor_rollout_ref.rollout.agent.default_agent_loop=efficient_single_turn_agent \
        "trainer.logger=[console,file]" > "$RES/e2e8b_$r.log" 2>&1
      rc=$?
      echo "== 8B $r rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$RES/summary.txt"
      grep -oE "step:[0-9]+ .*" "$RES/e2e8b_$r.log" | tr ' ' '\n' \
        | grep -E "^(step|timing_s/(gen|step|update_actor|old_log_prob)|response_length/(mean|max)|rollout/.*)" \
        | paste -sd' ' | tee -a "$RES/summary.txt"
      [ $rc = 0 ] && touch "$RES/e2e8b_$r.done" || grep -E "Error|error:|Traceback|OOM|out of memory" "$RES/e2e8b_$r.log" | tail -20
    done
    # Both backends' verl metrics side by side (the quickstart's report): $RES/e2e8b_summary.json.
    python3 - "$RES" "$FORCE_LEN_USED" "$ER_VERL_FORCE_ACCEPT" <<'PY'
import datetime, json, os, platform, sys
import torch
from er_verl.quickstart.run import ROLLOUTS, print_spec, print_table, read_metrics, summarize
res, force_len, force_alpha = sys.argv[1:4]
runs = {r: read_metrics(f"{res}/e2e8b_{r}.jsonl") for r in ROLLOUTS if os.path.exists(f"{res}/e2e8b_{r}.jsonl")}
summary = summarize(runs)
print_table(summary)
print_spec(runs)
env = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "python": platform.python_version(),
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "command": "PHASE=8 bash recipes/smoke/device_spec_e2e.sh",
       "forced": {"ER_VERL_FORCE_RESPONSE_LEN": force_len, "ER_VERL_FORCE_ACCEPT (efficient_sglang only)": force_alpha}}
json.dump({"environment": env, "summary": summary, "runs": runs}, open(f"{res}/e2e8b_summary.json", "w"), indent=1)
PY
    ;;
esac
nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$RES/summary.txt"
[ "$RES" = "$OUT" ] || tar czf "$OUT/er_res.tgz" --exclude='*.parquet' --exclude='*.safetensors' --exclude='ckpt' -C "$RES" .
true
