#!/usr/bin/env bash
# On the GPU host: GPU-marked tests of the drafter math, the requant timing, then the efficient smoke.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pytest -q -m gpu tests/draft 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
python3 -m er_verl.bench.requant --out "$OUT/requant_8b.json" 2>&1 | tail -12
