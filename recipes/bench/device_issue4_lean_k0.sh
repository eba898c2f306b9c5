#!/usr/bin/env bash
# On the GPU host (after staging): a same-host A/B of the lean K=0 step (ER_VERL_LEAN_K0; issue 4/5: ours at K=0 ran
# 0.86-0.87x of plain SGLang at bs 1 on two H200 hosts, 2026-11-25). 8B shape, random weights, forced alpha 0.9:
# plain SGLang once, then ours with ER_VERL_LEAN_K0=0 and =1 in turn (REPS rounds), each engine in its own process,
# all rows in one JSON ($J, copied to $OUT/lean_k0.json), ours' rows labelled lean-k0-{off,on}-REP and compared with
# plain. ER_VERL_PROFILE_EVERY lines (idle_ms, prelaunch_ms) go to $OUT/lean_k0_*.log. A rerun with the same $J
# resumes where a call stopped.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; J=${J:-/tmp/lean_k0.json}; mkdir -p "$OUT"
args=(--bs "${BS:-1,8,32}" --k "${K:-4}" --alpha 0.9 --new-tokens 256 --out "$J")
python3 -m er_verl.bench.decode --engines plain "${args[@]}" > "$OUT/lean_k0_plain.log" 2>&1
for rep in ${REPS:-1}; do
  for lean in 0 1; do
    name=$([ "$lean" = 1 ] && echo on || echo off)-$rep
    ER_VERL_LEAN_K0=$lean ER_VERL_PROFILE_EVERY=${EVERY:-100} python3 -m er_verl.bench.decode --engines ours \
      "${args[@]}" --label "lean-k0-$name" > "$OUT/lean_k0_$name.log" 2>&1
  done
done
cp "$J" "$OUT/lean_k0.json"
for f in "$OUT"/lean_k0_*.log; do
  echo "== $f"; tr '\r' '\n' < "$f" | grep -E " tok/s|er_verl\[profile\] K=|Error" | tail -12
done
