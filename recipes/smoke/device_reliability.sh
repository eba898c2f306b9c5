#!/usr/bin/env bash
# On the GPU host (after staging): issue 7's GPU tests (exactness over >= 1e5 tokens, 1024-sequence rollout
# with an abort under SGLang's strict KV checks, injected faults, 100 release/resume cycles); log under $OUT.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout ${T:-560} python3 -m pytest -v -s -p no:cacheprovider ${TESTS:-tests/engine/test_reliability_gpu.py tests/engine/test_drafter_gpu.py} \
  2>&1 | grep -vE "UserWarning|warnings.warn" | tee "$OUT/reliability_gpu.log" | grep -E "PASS|FAIL|ERROR|tokens|p-values|abort|drafts|memory|Error|assert" | head -60
