#!/usr/bin/env bash
# On the GPU host (after staging): the decode GEMM launched as a programmatic dependent (PDL, with an L2
# prefetch of each block's first tile before it waits) and SiluAndMul folded into the down GEMM.
#   PHASE=1: the GEMM's GPU tests; the decoder-layer chain bench (PDL off/on x SiluAndMul separate/fused);
#            drafter_8b three times, each in its own process: both off, PDL only, both on (the default);
#   PHASE=2: the speculative round's GPU tests (greedy equality, forced-alpha length, chi-square), K > 0 too;
#   PHASE=3: bench decode, plain then ours (K 1-4, alpha 0.9 / 0.8 / 0.6), 8B shape.
# Everything lands in $OUT/logs.tgz; PHASE=1 also leaves the host's JIT cache in $OUT/jit (<= 4 x 15 MiB).
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; RES=/tmp/er_res; mkdir -p "$OUT" "$RES"
finish() { tar czf "$OUT/logs.tgz" -C "$RES" . ; ls -la "$RES"; }
trap finish EXIT
case ${PHASE:-1} in
  1)
    python3 -m pytest -q tests/draft/test_decode_gemm_gpu.py > "$RES/gemm_gpu_tests.txt" 2>&1; tail -2 "$RES/gemm_gpu_tests.txt"
    python3 recipes/bench/w4a16_decode_gemm.py --chain --layers --m 1 8 16 32 --out "$RES/chain.json" \
      > "$RES/chain.txt" 2>&1; grep chain "$RES/chain.txt"
    for run in "1 1 pdl_silu" "0 0 base" "1 0 pdl"; do
      set -- $run
      ER_VERL_GEMM_PDL=$1 ER_VERL_FUSE_SILU=$2 timeout 280 python3 recipes/bench/drafter_8b.py \
        --out "$RES/drafter_$3.json" > "$RES/drafter_$3.txt" 2>&1
      echo "== $3"; grep -E "ratio|requant|bytes|Error" "$RES/drafter_$3.txt" | tail -8
    done
    mkdir -p "$OUT/jit"
    tar czf - -C ~ $(cd ~ && ls -d .cache/tvm-ffi .cache/flashinfer .cache/sglang 2>/dev/null) | split -b 15M - "$OUT/jit/cache.tgz."
    ls -la "$OUT/jit" ;;
  2)
    timeout 560 python3 -m pytest tests/engine/test_spec_round_gpu.py -q -s -k "not plain_k0" > "$RES/spec_round_gpu.txt" 2>&1
    grep -E "passed|failed|Error|assert|p = " "$RES/spec_round_gpu.txt" | tail -20 ;;
  3)
    timeout 240 python3 -m er_verl.bench.decode --engines plain --k 1 --bs 1,8,32 --alpha 0.9 --new-tokens 256 \
      --out "$RES/bench_decode.json" > "$RES/bench_plain.txt" 2>&1; grep -E "tok/s|Error" "$RES/bench_plain.txt" | tail -5
    timeout 330 python3 -m er_verl.bench.decode --engines ours --k 1,2,3,4 --bs 1,8,32 --alpha 0.9,0.8,0.6 \
      --new-tokens 256 --out "$RES/bench_decode.json" > "$RES/bench_ours.txt" 2>&1
    grep -E "tok/s|Error" "$RES/bench_ours.txt" | tail -40 ;;
esac
