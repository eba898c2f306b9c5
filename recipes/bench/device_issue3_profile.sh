#!/usr/bin/env bash
# On the GPU host (after staging): where a draft step's time goes. drafter_8b with each model's kernels per
# decode step at bs 1, 8, 32 (torch profiler over CUDA-graph replays). Logs and JSON in $OUT/logs.tgz.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
trap 'tar czf "$OUT/logs.tgz" -C "$RES" .' EXIT
timeout 400 python3 recipes/bench/drafter_8b.py --bs 1 8 32 --profile-bs 1 8 32 --out "$RES/drafter_profile.json" \
  > "$RES/drafter_profile.txt" 2>&1
grep -vE "Warning|warn|generation config|FQNs" "$RES/drafter_profile.txt" | tail -150
