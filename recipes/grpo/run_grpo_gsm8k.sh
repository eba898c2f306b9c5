#!/usr/bin/env bash
# GRPO on GSM8K with verl 0.9.1 and er_verl's efficient_sglang rollout backend (config/grpo_gsm8k.yaml).
#
#   bash recipes/grpo/run_grpo_gsm8k.sh                      # Qwen/Qwen2.5-0.5B-Instruct on 1 GPU
#   ROLLOUT=sglang bash recipes/grpo/run_grpo_gsm8k.sh       # the baseline: verl's own sglang backend
#   MODEL=/models/Qwen2.5-7B-Instruct NGPUS=8 bash recipes/grpo/run_grpo_gsm8k.sh \
#       actor_rollout_ref.rollout.tensor_model_parallel_size=2 trainer.logger='[console,wandb]'
#
# Env:
#   MODEL      hub id or local model folder (default Qwen/Qwen2.5-0.5B-Instruct)
#   DATA_DIR   folder with GSM8K train.parquet and test.parquet in verl's format (default ~/data/gsm8k);
#              when they are missing, they are made from GSM8K_SRC with `er_verl.cli prepare-gsm8k`
#   GSM8K_SRC  folder with GSM8K train.jsonl and test.jsonl (openai/grade-school-math; default DATA_DIR)
#   ROLLOUT    efficient_sglang (default) or sglang
#   NGPUS      GPUs on this node (default 1)
#   PYTHON     interpreter (default python3)
#   DRY_RUN=1  prepare the data, then print the training command, one argument per line, instead of running it
# Arguments: extra Hydra overrides, passed last (so they win).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../common/gsm8k_env.sh"

cmd=($PY -m verl.trainer.main_ppo --config-path="$HERE/config" --config-name=grpo_gsm8k
  "${COMMON_OVERRIDES[@]}" "$@")

run_or_print "${cmd[@]}"
