#!/usr/bin/env bash
# On the GPU host (after staging): issue 4, the drafter's FlashInfer decode attention with / without tensor cores
# (ER_VERL_DRAFT_DECODE_TENSOR_CORES, default 0; the target's K=0 steps keep SGLang's choice, tensor cores for
# GQA >= 4). 8B shape, K=4, forced alpha 0.9; results accumulate in $OUT/draft_tc_8b.json.
#   PHASE=1: prompt 256: plain SGLang and ours (default: drafter without tensor cores), then ours with them (A/B);
#   PHASE=2: prompt 2048 (a long-context tail), bs 1 and 8: the same three rows, then the speculative round's
#            GPU tests (greedy = plain, forced length, distribution).
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bench() { timeout "$1" python3 -m er_verl.bench.decode --new-tokens 256 --k 4 --alpha 0.9 \
  --out "$OUT/draft_tc_8b.json" "${@:2}" >> "$OUT/draft_tc.log" 2>&1; grep -E "tok/s|Error|failed" "$OUT/draft_tc.log" | tail -12; }
case ${PHASE:-1} in
  1) bench 330 --engines plain,ours --bs 1,8,32 --label draft-tc0
     ER_VERL_DRAFT_DECODE_TENSOR_CORES=1 bench 200 --engines ours --bs 1,8,32 --label draft-tc1 ;;
  2) bench 200 --engines plain,ours --bs 1,8 --prompt-len 2048 --label draft-tc0-prompt2048
     ER_VERL_DRAFT_DECODE_TENSOR_CORES=1 bench 150 --engines ours --bs 1,8 --prompt-len 2048 --label draft-tc1-prompt2048
     timeout ${T_TESTS:-230} python3 -m pytest -q -m gpu tests/engine/test_spec_round_gpu.py -x -s -p no:cacheprovider \
       > "$OUT/spec_round_gpu_tests.log" 2>&1; grep -E "passed|failed|Error|greedy:|tokens per round|chi|tensor cores" "$OUT/spec_round_gpu_tests.log" | tail -20 ;;
esac
