#!/usr/bin/env bash
# On the GPU host (after staging): the self-drafter GPU tests (tiny model), the fused requant check,
# then the 8B drafter bench. Logs and JSON under $OUT. Each step has its own time limit.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout ${T_TESTS:-330} python3 -m pytest tests/engine/test_drafter_gpu.py -x -v -s -k "not fp8" 2>&1 \
  | tee "$OUT/drafter_gpu.log" | grep -E "PASS|FAIL|Error|error|drafter bytes|max_total_num_tokens|assert" | head -40
timeout ${T_REQUANT:-60} python3 -m er_verl.bench.requant --check --out "$OUT/requant_8b.json" 2>&1 | grep -E "total|over|check|Error" | head
timeout ${T_BENCH:-200} python3 recipes/bench/drafter_8b.py --out "$OUT/drafter_8b.json" 2>&1 | tee "$OUT/drafter_8b.log" | tail -25
