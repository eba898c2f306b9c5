#!/usr/bin/env bash
# On the GPU host (after staging): where a FlashInfer K=4 round goes, 8B shape, forced alpha 0.9, bs 1 / 8 / 32
# (issue 4: the rest of a round outside the draft steps was 9.7 / 9.0 / 23.2 ms by arithmetic on two rows).
# torch.profiler windows (ER_VERL_TORCH_PROFILE, 8 rounds after 20) -> er_verl.bench.trace_gaps: GPU busy per
# phase (draft steps, verify), kernels outside phases (sampling), idle gaps and the host event each waited on.
# Out: $OUT/round_profile.log, $OUT/gaps.txt, $OUT/prof.tgz (the windows' tables and traces), $OUT/prof_8b.json.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; P=/tmp/er_prof; mkdir -p "$OUT" "$P"
ER_VERL_PROFILE_EVERY=${EVERY:-50} ER_VERL_TORCH_PROFILE="$P:20:8" timeout ${T:-300} \
  python3 -m er_verl.bench.decode --engines ours --bs ${BS:-1,8,32} --k ${K:-4} --alpha 0.9 --new-tokens 256 \
  --out "$OUT/prof_8b.json" --label ${LABEL:-flashinfer-profile} ${ARGS:-} > "$OUT/round_profile.log" 2>&1
grep -E "er_verl\[profile\]|tok/s|Error|failed" "$OUT/round_profile.log" | tail -30
python3 -m er_verl.bench.trace_gaps "$P" | tee "$OUT/gaps.txt"
tar czf "$OUT/prof.tgz" -C "$P" .
