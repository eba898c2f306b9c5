#!/usr/bin/env bash
# On the GPU host (after staging): issue 4's measurements after the 2026-11-25 diagnosis (device_diag.sh):
# the drafter's Marlin GEMMs were ~2x their byte cost and FlashInfer's CPU planning idled the GPU ~47% of a
# K=0 step, while SGLang's triton backend kept it ~93% busy. PHASE=1|2|3, one device command each; results
# accumulate in /tmp/er_res on the host and are copied to $OUT after every phase.
#   1: int4 GEMM candidates (int4_gemm.py); the fastest Marlin reduction over the 8B layer shapes at M=1 is
#      saved as the mode of the later phases; drafter_8b.py with it (draft/target step ratio, requant, bytes);
#   2: plain SGLang with flashinfer and with triton, bs 1, 8, 32, 128;
#   3: ours (triton, that Marlin mode) at K 2..5, forced alpha 0.9, 0.8, 0.6, same bs.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
if ls .jitcache/cache.tgz.* >/dev/null 2>&1 && [ ! -d ~/.cache/tvm-ffi ]; then
  cat .jitcache/cache.tgz.* | tar xzf - -C ~ && echo "jit cache restored"
fi
export ER_VERL_MARLIN_REDUCE=$(cat "$RES/marlin_mode" 2>/dev/null || echo fp32)
BS=${BS:-1,8,32,128}
bench() { timeout "$1" python3 -m er_verl.bench.decode --bs "$BS" --new-tokens 256 --out "$RES/bench_8b.json" "${@:2}"; }
case ${PHASE:-1} in
  1)
    timeout 240 python3 recipes/bench/int4_gemm.py --out "$RES/int4_gemm.json" 2>&1 | grep -v Warning | tail -80
    python3 - "$RES" <<'PY'
import json, sys, collections
rows = json.load(open(f"{sys.argv[1]}/int4_gemm.json"))["rows"]
tot = collections.defaultdict(float)
for r in rows:
    if r["m"] == 1 and r["layer"] != "lm_head" and r["variant"].startswith("marlin"):
        tot[r["variant"]] += r["us"]
names = {"marlin": "fp32", "marlin_nofp32": "bf16", "marlin_atomic": "atomic"}
best = min(tot, key=tot.get)
print("per-layer Marlin us at M=1:", {names[k]: round(v, 1) for k, v in tot.items()}, "->", names[best])
open(f"{sys.argv[1]}/marlin_mode", "w").write(names[best])
PY
    export ER_VERL_MARLIN_REDUCE=$(cat "$RES/marlin_mode")
    timeout 330 python3 recipes/bench/drafter_8b.py --out "$RES/drafter_8b_${ER_VERL_MARLIN_REDUCE}.json" \
      > "$RES/drafter_8b.log" 2>&1; grep -E "^bs|requant|Error" "$RES/drafter_8b.log" ;;
  2)
    bench 280 --engines plain --label flashinfer 2>&1 | grep -E "tok/s|Error"
    bench 280 --engines plain --label triton --engine-args '{"attention_backend": "triton"}' 2>&1 | grep -E "tok/s|Error" ;;
  3)
    echo "Marlin reduction: $ER_VERL_MARLIN_REDUCE"
    bench 570 --engines ours --label "triton-$ER_VERL_MARLIN_REDUCE" --k 2,3,4,5 --alpha 0.9,0.8,0.6 \
      --engine-args '{"attention_backend": "triton"}' 2>&1 | grep -E "tok/s|Error|WARNING a draft|failed|Marlin" ;;
esac
cp -r "$RES"/. "$OUT"/ 2>/dev/null; ls "$OUT"
