#!/usr/bin/env bash
# On the GPU host (after staging): how much bench decode moves between processes. Plain SGLang and ours
# alternate, each in its own process: plain a, ours a, plain b, ours b, ours c (ours at K 2 / 3, alpha 0.9,
# bs 1 / 8 / 32; each ours run's speedups are against the plain run before it). Logs and JSON in $OUT/logs.tgz.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res/repeats; mkdir -p "$OUT" "$RES"
trap 'tar czf "$OUT/logs.tgz" -C "$RES" .' EXIT
plain=""
for run in plain_a ours_a plain_b ours_b ours_c; do
  engine=${run%_*}
  if [ "$engine" = plain ]; then plain=$RES/$run.json; out=$plain; else out=$RES/$run.json; cp "$plain" "$out"; fi
  timeout 150 python3 -m er_verl.bench.decode --engines $engine --k 2,3 --bs 1,8,32 --alpha 0.9 --new-tokens 256 \
    --out "$out" > "$RES/$run.txt" 2>&1
  echo "== $run"; grep -E "tok/s" "$RES/$run.txt" | sed 's/.*\(ours\|plain\) K/\1 K/'
done
