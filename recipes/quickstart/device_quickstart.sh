#!/usr/bin/env bash
# On the GPU host (after staging): the offline quickstart end to end (SFT a ~20M policy on the sums
# task, then GRPO with efficient_sglang and with sglang); summary, plot and logs under $OUT/qs.
# Written 2026-11-25; not yet run on a GPU.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout ${T:-580} python3 -m er_verl.cli quickstart --work "$OUT/qs" --steps ${STEPS:-5} "$@" 2>&1 | tail -30
