#!/usr/bin/env bash
# On the GPU host (after staging): issue 4 after the sync-free causal verify plan (er_verl/engine/verify_plan.py).
# 8B shape, FlashInfer, 256 new tokens; results accumulate in $OUT/fast_verify_8b.json (resumable).
#   PHASE=1: plain SGLang and ours (fast verify plan, the default) at K 3, 4, 5, forced alpha 0.9 and 0.8;
#   PHASE=2: ours with ER_VERL_FAST_VERIFY_PLAN=0 (SGLang's syncing, masked verify plan) at K=4, alpha 0.9 (the A/B),
#            then the speculative round's GPU tests (greedy = plain, forced length, distribution) with the new plan.
#   PHASE=3: the same-host A/B, K=4, alpha 0.9: ours with the new plan, then with SGLang's (ER_VERL_FAST_VERIFY_PLAN=1/0).
#   (PHASE=4 / 5, overlapped rounds, were measured on 2026-11-25 and removed with that code: README, issue 4.)
# On 2026-11-25 a first engine boot on a fresh host (kernel JIT) ran past 190-240 s: give each boot >= 330 s.
set -uo pipefail
source recipes/smoke/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BS=${BS:-1,8,32}
bench() { ER_VERL_PROFILE_EVERY=100 timeout "$1" python3 -m er_verl.bench.decode --bs "$BS" --new-tokens 256 \
  --out "$OUT/fast_verify_8b.json" "${@:2}" >> "$OUT/fast_verify.log" 2>&1; grep -E "tok/s|Error|failed|keeps SGLang" "$OUT/fast_verify.log" | tail -40; }
case ${PHASE:-1} in
  1) bench ${T:-560} --engines plain,ours --label fast-verify --k 3,4,5 --alpha 0.9,0.8 ;;
  2) ER_VERL_FAST_VERIFY_PLAN=0 bench ${T:-330} --engines ours --label stock-verify-plan --k 4 --alpha 0.9
     timeout ${T_TESTS:-330} python3 -m pytest -q -m gpu tests/engine/test_spec_round_gpu.py -x -s -p no:cacheprovider \
       > "$OUT/spec_round_gpu_tests.log" 2>&1; grep -E "passed|failed|Error|greedy:|tokens per round|chi|split" "$OUT/spec_round_gpu_tests.log" | tail -20 ;;
  3) for v in 1 0; do ER_VERL_FAST_VERIFY_PLAN=$v bench ${T:-280} --engines ours --label ab-fastplan$v --k 4 --alpha 0.9; done ;;
esac
