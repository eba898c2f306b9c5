#!/usr/bin/env bash
# On the GPU host (after staging): where a round's time goes in the self-draft engine, 8B shape.
# Prints er_verl[profile] lines (GPU ms, host ms, scheduler gap ms, graph replay shares per K) for
# K=0 and K=4 at bs 1 and 8 next to plain SGLang, then the same with the overlap scheduler off (a
# variant row). Written after the 2026-11-25 bench showed ours' K=0 path at 0.51-0.62x of plain;
# not yet run.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
common="--bs 1,8 --k 4 --alpha 0.9 --new-tokens 256 --out $OUT/profile_8b.json"
ER_VERL_PROFILE_EVERY=${EVERY:-100} timeout ${T:-400} python3 -m er_verl.bench.decode --engines plain,ours $common \
  > "$OUT/profile.log" 2>&1
ER_VERL_PROFILE_EVERY=${EVERY:-100} timeout ${T2:-180} python3 -m er_verl.bench.decode --engines ours $common \
  --label no-overlap --engine-args '{"disable_overlap_schedule": true}' >> "$OUT/profile.log" 2>&1
grep -E "er_verl\[profile\]|tok/s" "$OUT/profile.log" | tail -60
