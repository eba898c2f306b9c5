#!/usr/bin/env bash
# On the GPU host (after staging): where a K=1 round's time goes at bs 32 and a long context, 8B shape
# (written 2026-11-26, session 22). Run 15's profile lines put a K=1 call at 18.8-23.5 ms against 9.5-11 ms
# for K=0 at bs 32-35, with the verify pass ~3.4 ms above a plain step outside attention. This runs the
# decode bench (plain SGLang, then ours at K=0 and K=1, alpha forced to 0.9) at bs 32 with PROMPT_LEN-token
# prompts, with er_verl's per-K profile lines and torch.profiler windows (ER_VERL_TORCH_PROFILE) per K.
# Then (CHECK=1, default) a short gate rollout whose log must show the controller and the draft window
# starting (the 40e5b15 review mends). Outputs under $OUT.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/prof"
ER_VERL_PROFILE_EVERY=64 ER_VERL_TORCH_PROFILE="$OUT/prof:${SKIP:-40}:10" timeout ${T:-420} \
  python3 -m er_verl.bench.decode --engines ${ENGINES:-plain,ours} --bs 32 --k 1 --alpha 0.9 \
  --prompt-len ${PROMPT_LEN:-3500} --new-tokens ${NEW_TOKENS:-256} ${EXTRA:-} --out "$OUT/verify_overhead.json" \
  > "$OUT/verify_overhead.log" 2>&1
grep -E "er_verl\[profile\]|tok/s|Error" "$OUT/verify_overhead.log" | tail -30
if [ "${CHECK:-1}" = 1 ]; then
  NAME=mends_check FRESH=1 PROMPTS=8 MAX_LEN=1024 MODE=gate WINDOW=512 T=${T_CHECK:-240} \
    bash recipes/bench/device_issue5_rollout.sh
  grep -E "controller on|draft steps attend to|unsplit" "$OUT/mends_check_gate.log" | head -5
fi
