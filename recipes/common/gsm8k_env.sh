# Sourced by the GSM8K run scripts (recipes/grpo, recipes/ppo): env defaults, the rollout/agent-loop pair,
# GSM8K parquet made from jsonl when missing, absolute paths, and run_or_print for DRY_RUN.
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
GSM8K_SRC=${GSM8K_SRC:-$DATA_DIR}
ROLLOUT=${ROLLOUT:-efficient_sglang}
NGPUS=${NGPUS:-1}
PY=${PYTHON:-python3}

case "$ROLLOUT" in
  efficient_sglang) AGENT_LOOP=efficient_single_turn_agent ;;
  # verl's sglang backend never reads rollout.custom, so custom.efficient can stay in the config.
  sglang) AGENT_LOOP=single_turn_agent ;;
  *) echo "ROLLOUT=$ROLLOUT is not supported here: use efficient_sglang or sglang." >&2; exit 2 ;;
esac

if [ ! -f "$DATA_DIR/train.parquet" ] || [ ! -f "$DATA_DIR/test.parquet" ]; then
  if [ ! -f "$GSM8K_SRC/train.jsonl" ] || [ ! -f "$GSM8K_SRC/test.jsonl" ]; then
    echo "No train.parquet/test.parquet in DATA_DIR=$DATA_DIR, and no train.jsonl/test.jsonl in" \
      "GSM8K_SRC=$GSM8K_SRC to make them from. Point GSM8K_SRC at a GSM8K jsonl folder, or make the" \
      "parquet with verl's examples/data_preprocess/gsm8k.py --local_save_dir \$DATA_DIR." >&2
    exit 2
  fi
  $PY -m er_verl.cli prepare-gsm8k --src "$GSM8K_SRC" --out "$DATA_DIR" >&2
fi

# verl reads these in Ray workers: absolute paths do not depend on their working directory.
absolute_if_dir() { if [ -d "$1" ]; then (cd "$1" && pwd); else echo "$1"; fi; }
DATA_DIR=$(cd "$DATA_DIR" && pwd)
MODEL=$(absolute_if_dir "$MODEL")

# Overrides both run scripts pass to verl (data, policy, rollout pair, GPUs, run name).
COMMON_OVERRIDES=(
  data.train_files="$DATA_DIR/train.parquet"
  data.val_files="$DATA_DIR/test.parquet"
  actor_rollout_ref.model.path="$MODEL"
  actor_rollout_ref.rollout.name="$ROLLOUT"
  actor_rollout_ref.rollout.agent.default_agent_loop="$AGENT_LOOP"
  trainer.n_gpus_per_node="$NGPUS"
  trainer.experiment_name="$(basename "$MODEL")_$ROLLOUT"
)

run_or_print() {  # DRY_RUN=1: print the command one argument per line instead of running it
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%s\n' "$@"; else exec "$@"; fi
}
