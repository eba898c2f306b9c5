#!/usr/bin/env bash
# GRPO smoke run on one GPU, fully offline: a random-init Qwen2.5-0.5B-shaped model with a BPE tokenizer
# trained on GSM8K, GSM8K in verl's parquet format, STEPS training steps (each ends in a weight sync).
#
#   ROLLOUT=efficient_sglang bash recipes/smoke/run_grpo_smoke.sh     # the er_verl backend
#   ROLLOUT=sglang           bash recipes/smoke/run_grpo_smoke.sh     # verl's own, for comparison
#
# Env: WORK (scratch dir), GSM8K_SRC (folder with train/test.jsonl), STEPS, SHAPE (qwen2.5-0.5b, or qwen3-8b
# for the systems run), VOCAB (the offline tokenizer's size), extra Hydra overrides as args (later ones win).
set -euo pipefail
ROLLOUT=${ROLLOUT:-efficient_sglang}
WORK=${WORK:-/tmp/er_verl_smoke}
STEPS=${STEPS:-2}
GSM8K_SRC=${GSM8K_SRC:-../shared/data/gsm8k}
PY=${PYTHON:-python3}

[ -f "$WORK/data/train.parquet" ] || $PY -m er_verl.cli prepare-gsm8k --src "$GSM8K_SRC" --out "$WORK/data"
[ -f "$WORK/model/config.json" ] || $PY -m er_verl.cli make-model --shape "${SHAPE:-qwen2.5-0.5b}" --out "$WORK/model" \
  --text "$GSM8K_SRC/train.jsonl" --vocab-size "${VOCAB:-8192}"

extra=()
if [ "$ROLLOUT" = efficient_sglang ]; then
  extra+=(actor_rollout_ref.rollout.agent.default_agent_loop=efficient_single_turn_agent
          +actor_rollout_ref.rollout.custom.efficient.max_draft_len=4)
fi

$PY -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  algorithm.use_kl_in_reward=False \
  data.train_files="$WORK/data/train.parquet" \
  data.val_files="$WORK/data/test.parquet" \
  data.train_batch_size=32 \
  data.max_prompt_length=256 \
  data.max_response_length=256 \
  data.filter_overlong_prompts=True \
  actor_rollout_ref.model.path="$WORK/model" \
  +actor_rollout_ref.model.override_config.attn_implementation=sdpa \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.ppo_mini_batch_size=32 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.rollout.name="$ROLLOUT" \
  actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.4 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
  trainer.n_gpus_per_node=1 \
  trainer.nnodes=1 \
  trainer.total_training_steps="$STEPS" \
  trainer.val_before_train=False \
  trainer.test_freq=-1 \
  trainer.save_freq=-1 \
  trainer.logger='[console]' \
  trainer.project_name=er_verl_smoke \
  trainer.experiment_name="smoke_$ROLLOUT" \
  "${extra[@]}" "$@"
