#!/usr/bin/env bash
# On the GPU host (after staging): ours' eager K=0 step against plain SGLang's eager decode at batch sizes above
# the decode graphs (issue 5: in the rollout, ours' off-gate steps at bs 256-511 were 3.7-5% slower than plain's
# by median). 8B shape, dummy weights. Rows: plain; ours K=0 with the torch sampler (default); ours K=0 with
# ER_VERL_K0_SAMPLER=gumbel (label gumbel). ER_VERL_PROFILE_EVERY prints ours' GPU/host split per call.
# (--k 5 as in the rollout: its verify graphs fit FlashInfer's 512 MB workspace up to bs 128; the K=5 rows above
# that are eager rounds and not the point. bs 128 and 256 give each engine a decode graph list it accepts.)
# Out: $OUT/k0_large_bs.json, $OUT/k0_large_bs.log.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
common="--bs ${BS:-128,256,400} --k 5 --alpha 0.9 --new-tokens ${NEW:-96} --out $OUT/k0_large_bs.json"
ER_VERL_PROFILE_EVERY=${EVERY:-40} timeout ${T:-330} python3 -m er_verl.bench.decode --engines plain,ours $common \
  > "$OUT/k0_large_bs.log" 2>&1
ER_VERL_K0_SAMPLER=gumbel ER_VERL_PROFILE_EVERY=${EVERY:-40} timeout ${T2:-200} python3 -m er_verl.bench.decode \
  --engines ours $common --label gumbel >> "$OUT/k0_large_bs.log" 2>&1
grep -E "er_verl\[profile\]|tok/s|Error|failed" "$OUT/k0_large_bs.log" | tail -40
