#!/usr/bin/env bash
# On the GPU host (after staging): the shared-KV speculative round's GPU tests, one engine pair at a time
# (each boots a plain and a self-draft engine). Logs under $OUT. Not yet run: written 2026-11-25.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for case in greedy forced distribution; do
  ER_VERL_TEST_DRAWS=${ER_VERL_TEST_DRAWS:-4000} ER_VERL_TEST_PEAK=${ER_VERL_TEST_PEAK:-6} \
    timeout ${T_CASE:-170} python3 -m pytest tests/engine/test_spec_round_gpu.py -q -s -x -k "$case" 2>&1 \
    | tee "$OUT/spec_round_$case.log" | grep -E "passed|failed|error|Error|er_verl\[" | head -20
done
