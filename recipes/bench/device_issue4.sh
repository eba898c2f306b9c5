#!/usr/bin/env bash
# On the GPU host (after staging): the shared-KV speculative round's GPU tests (each boots a plain and
# a self-draft engine of the tiny model), then the drafter tests. Logs under $OUT.
# A fresh host compiles SGLang's JIT kernels for the verify path for ~7 min; a cache saved from an
# earlier host (.jitcache/cache.tgz.*, git-ignored, carried separately) is unpacked by device_env.sh if present.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for case in ${CASES:-greedy distribution forced}; do
  ER_VERL_TEST_DRAWS=${ER_VERL_TEST_DRAWS:-4000} ER_VERL_TEST_PEAK=${ER_VERL_TEST_PEAK:-6} \
    timeout ${T_CASE:-170} python3 -m pytest tests/engine/test_spec_round_gpu.py -q -s -x -k "$case" 2>&1 \
    | tee "$OUT/spec_round_$case.log" | grep -E "passed|failed|error|Error|er_verl\[|greedy:|token |prompt |forced" | head -20
done
