#!/usr/bin/env bash
# On the GPU host (after staging): issue 4's measurements after the 2026-11-25 diagnosis (device_diag.sh):
# the drafter's Marlin GEMMs were ~2x their byte cost and FlashInfer's CPU planning idled the GPU ~47% of a
# K=0 step, while SGLang's triton backend kept it ~93% busy. PHASE=1|2|3, one device command each; results
# accumulate in /tmp/er_res on the host and are copied to $OUT after every phase.
#   1: int4 GEMM candidates (int4_gemm.py); drafter_8b.py (draft/target step ratio, requant, bytes);
#   2: plain SGLang with flashinfer and with triton, bs 1, 8, 32, 128;
#   3: ours (triton) at K 2..5, forced alpha 0.9, 0.8, 0.6, same bs;
#   4: plain and ours both on flashinfer, K 3, 4, alpha 0.9, 0.8 (after the 2026-11-25 K=0 publish fix: FlashInfer's
#      planning no longer stalls K=0 steps, and its verify prefill kernel was ~0.9 ms cheaper than triton's at bs 1).
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
BS=${BS:-1,8,32,128}
bench() { timeout "$1" python3 -m er_verl.bench.decode --bs "$BS" --new-tokens 256 --out "$RES/bench_8b.json" "${@:2}"; }
case ${PHASE:-1} in
  1)
    timeout 240 python3 recipes/bench/int4_gemm.py --out "$RES/int4_gemm.json" 2>&1 | grep -v Warning | tail -80
    timeout 330 python3 recipes/bench/drafter_8b.py --out "$RES/drafter_8b.json" \
      > "$RES/drafter_8b.log" 2>&1; grep -E "^bs|requant|Error" "$RES/drafter_8b.log" ;;
  2)
    bench 280 --engines plain --label flashinfer 2>&1 | grep -E "tok/s|Error"
    bench 280 --engines plain --label triton --engine-args '{"attention_backend": "triton"}' 2>&1 | grep -E "tok/s|Error" ;;
  3)
    bench 570 --engines ours --label triton-atomic --k 2,3,4,5 --alpha 0.9,0.8,0.6 \
      --engine-args '{"attention_backend": "triton"}' 2>&1 | grep -E "tok/s|Error|WARNING a draft|failed|Marlin" ;;
  4)
    bench 570 --engines plain,ours --label flashinfer-publish --k 3,4 --alpha 0.9,0.8 2>&1 \
      | grep -E "tok/s|Error|failed" ;;
esac
cp -r "$RES"/. "$OUT"/ 2>/dev/null; ls "$OUT"
# The 2026-11-25 run also chose a Marlin reduction (fp32/bf16/atomic) from phase 1 and ran the drafter with it
# ("atomic", hence the label); int4_gemm.py measured the three equal, so that knob was removed afterwards.
