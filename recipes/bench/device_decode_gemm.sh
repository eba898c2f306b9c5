#!/usr/bin/env bash
# On the GPU host (after staging): er_verl's int4 decode GEMM.
#   PHASE=1: its GPU tests, the kernel bench next to bf16 and Marlin (8B layer shapes), the 8B drafter bench;
#   PHASE=2: bench decode at alpha 0.9 vs plain SGLang (8B shape); PHASE=3: the drafter GPU tests (tiny model).
#   DRAFTER_8B=1 adds the 8B drafter bench to PHASE 1.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
case ${PHASE:-1} in
  1)
    timeout 120 python3 -m pytest tests/draft/test_decode_gemm_gpu.py -q 2>&1 | tail -3
    timeout 150 python3 recipes/bench/w4a16_decode_gemm.py --m 1 2 4 8 16 32 --out "$RES/decode_gemm.json" \
      > "$RES/decode_gemm.log" 2>&1; grep -E "decoder layer|requant|Error|error" "$RES/decode_gemm.log" | tail -40
    if [ -n "${DRAFTER_8B:-}" ]; then
      timeout 300 python3 recipes/bench/drafter_8b.py --out "$RES/drafter_8b.json" > "$RES/drafter_8b.log" 2>&1
      tail -20 "$RES/drafter_8b.log"
    fi ;;
  2)
    timeout 560 python3 -m er_verl.bench.decode --engines plain,ours --bs 1,8,32 --k 3,4 --alpha 0.9 \
      --new-tokens 256 --out "$RES/bench_decode_gemm.json" --label decode-gemm \
      --engine-args '{"attention_backend": "triton"}' 2>&1 | grep -E "tok/s|Error|failed" ;;
  3)
    timeout 560 python3 -m pytest tests/engine/test_drafter_gpu.py -x -q -s -k "not fp8" > "$RES/drafter_gpu.log" 2>&1
    grep -E "passed|failed|Error|assert|drafter bytes" "$RES/drafter_gpu.log" | head -20 ;;
esac
cp -r "$RES"/. "$OUT"/ 2>/dev/null; ls "$OUT"
