#!/usr/bin/env bash
# On the GPU host (after staging, after device_issue4_profile.sh wrote $OUT/profile_8b.json or not):
# the same bs 1/8, K=0/4 comparison with SGLang's triton attention backend for both plain and ours.
# Why: FlashInfer declares needs_cpu_seq_lens, so SGLang's spec-v2 scheduler blocks the host on every
# step until the previous verify published its lengths (overlap_utils.resolve_seq_lens_cpu); triton
# does not. Rows are labelled "triton". Written 2026-11-25; not yet run.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ER_VERL_PROFILE_EVERY=${EVERY:-100} timeout ${T:-560} python3 -m er_verl.bench.decode --engines plain,ours \
  --bs 1,8 --k 4 --alpha 0.9 --new-tokens 256 --out "$OUT/profile_8b.json" --label triton \
  --engine-args '{"attention_backend": "triton"}' > "$OUT/variants.log" 2>&1
grep -E "er_verl\[profile\]|tok/s|Error" "$OUT/variants.log" | tail -40
