#!/usr/bin/env bash
# The GRPO recipe (recipes/grpo) with a custom reward function: strict_gsm8k_reward.py, loaded by verl
# through reward.custom_reward_function.{path,name}. Nothing else changes, so this script only adds
# overrides and hands over to recipes/grpo/run_grpo_gsm8k.sh.
#
#   bash recipes/extend/run_grpo_strict_reward.sh
#   ROLLOUT=sglang bash recipes/extend/run_grpo_strict_reward.sh
#   bash recipes/extend/run_grpo_strict_reward.sh +reward.custom_reward_function.reward_kwargs.format_score=0.1
#
# Env: the same as recipes/grpo/run_grpo_gsm8k.sh (MODEL, DATA_DIR, GSM8K_SRC, ROLLOUT, NGPUS, PYTHON, DRY_RUN).
# Arguments: extra Hydra overrides, passed last (so they win).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# verl 0.9.1's main_ppo reads reward.custom_reward_function only: the top-level custom_reward_function
# of older verl scripts is still in its YAML, but nothing copies it over, so it would be ignored.
# The path is absolute: verl loads the file in its reward workers (Ray actors), whatever their working directory.
exec bash "$HERE/../grpo/run_grpo_gsm8k.sh" \
  reward.custom_reward_function.path="$HERE/strict_gsm8k_reward.py" \
  reward.custom_reward_function.name=compute_score \
  trainer.project_name=er_verl_extend_strict_reward \
  "$@"
