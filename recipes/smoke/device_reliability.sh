#!/usr/bin/env bash
# On the GPU host (after staging): issue 7's GPU tests (exactness over >= 1e5 tokens, 1024-sequence rollout
# with an abort under SGLang's strict KV checks, injected faults, 100 release/resume cycles). Each reliability
# test, and the drafter file (its tests share one engine, in order), runs in its own pytest process with its
# failure summary in $OUT/<name>.log, so a run cut short still says why the finished ones failed.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cases=${CASES:-"$(python3 -m pytest --collect-only -q -p no:cacheprovider tests/engine/test_reliability_gpu.py 2>/dev/null | grep '::') tests/engine/test_drafter_gpu.py"}
for case in $cases; do
  name=$(echo "${case##*/}" | sed 's/[^A-Za-z0-9_.-]/_/g' | cut -c1-80)
  timeout ${T_EACH:-300} python3 -m pytest -rA --tb=short -s -p no:cacheprovider "$case" 2>&1 \
    | grep -vE "UserWarning|warnings.warn|SyntaxWarning|Configuration class|Capturing batches" > "$OUT/$name.log"
  tail -3 "$OUT/$name.log"
done
