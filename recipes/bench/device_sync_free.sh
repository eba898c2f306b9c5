#!/usr/bin/env bash
# On the GPU host (after staging): sync-free windowed rounds (er_verl/engine/sync_free.py) against SGLang's
# synchronous resolve, same host, back to back (written 2026-11-26, session 22). bench decode, ours only, at
# bs BS with PROMPT_LEN-token prompts, draft_kv_window 512, forced alpha 0.9: ER_VERL_SYNC_FREE=0 (label "sync"),
# then the default (label "sync_free"); er_verl[profile] lines every 64 calls. Outputs under $OUT.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
common="--engines ours --bs ${BS:-1,8,32} --k ${K:-1,2} --alpha 0.9 --prompt-len ${PROMPT_LEN:-3500} \
  --new-tokens ${NEW_TOKENS:-256} --draft-kv-window 512 --out $OUT/sync_free.json"
for mode in ${MODES:-sync sync_free}; do
  flag=1; [ "$mode" = sync ] && flag=0
  ER_VERL_SYNC_FREE=$flag ER_VERL_PROFILE_EVERY=64 timeout ${T:-280} python3 -m er_verl.bench.decode $common \
    --label "$mode" > "$OUT/sync_free_$mode.log" 2>&1
  grep -E "tok/s|sync-free|draft steps attend|Error|error" "$OUT/sync_free_$mode.log" | tail -12
done
