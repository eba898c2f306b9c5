#!/usr/bin/env bash
# On the GPU host (after staging): full-context speculative rounds with triton drafts, which resolve sync-free
# (EfficientConfig.draft_attention="triton", er_verl/engine/sync_free.py), against FlashInfer drafts, which wait
# for each round's lengths on the host. er-verl bench decode, 8B shape, forced alpha, each engine in its own
# process on one host; then the GPU tests of the triton path. PHASE=plain_fi | triton | tests | long_fi_triton |
# long_plain (long_*: 3500-token prompts, K 2,3, alpha 0.9, unless K / ALPHA / PROMPT_LEN say otherwise); under $OUT.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bench() {  # label, then bench arguments
  timeout "${T:-280}" python3 -m er_verl.bench.decode --bs "${BS:-1,8,32}" --new-tokens 256 \
    --prompt-len "${PROMPT_LEN:-256}" --k "${K:-2,3,4}" --alpha "${ALPHA:-0.9,0.8}" --out "$OUT/${JSON:-triton_drafts}.json" \
    --label "$1" "${@:2}" \
    > "$OUT/bench_$1.log" 2>&1
  grep -E "tok/s|sync-free|Error|error|failed" "$OUT/bench_$1.log" | tail -30
}
case ${PHASE:-plain_fi} in
  plain_fi) bench plain --engines plain; bench flashinfer_drafts --engines ours ;;
  triton) bench triton_drafts --engines ours --draft-attention triton ;;
  long_fi_triton) export PROMPT_LEN=${PROMPT_LEN:-3500} K=${K:-2,3} ALPHA=${ALPHA:-0.9} JSON=long
    bench long_flashinfer_drafts --engines ours; bench long_triton_drafts --engines ours --draft-attention triton ;;
  long_plain) export PROMPT_LEN=${PROMPT_LEN:-3500} JSON=long; bench long_plain --engines plain ;;
  tests) timeout 560 python3 -m pytest tests/engine/test_spec_round_gpu.py -q -s -p no:cacheprovider -k triton \
           > "$OUT/gpu_tests_triton.log" 2>&1; grep -E "passed|failed|Error|tokens|token [0-9]|sync-free" \
           "$OUT/gpu_tests_triton.log" | tail -30 ;;
esac
