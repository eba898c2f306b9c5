"""verl 0.9.1, v1 trainer: log speculative-decoding metrics when the rollout is efficient_sglang.

Replaces ``verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_metrics`` by a wrapper that runs the
original unchanged, then adds spec metrics if the original logged none. Why: the original fetches the
per-sample ``extra_fields`` spec_num_* only when ``actor_rollout_ref.model.mtp.enable`` and
``enable_rollout`` are set, and those flags also switch SGLang to MTP speculation, so efficient_sglang
cannot borrow them. Applied by ``er_verl.rollout.patches`` only for verl 0.9.1, once per class.

Added metrics, over the batch's non-padding samples (per-sample fields from ``er_verl.rollout.metrics``):

* ``rollout/spec_accept_rate``, ``rollout/spec_accept_length``: verl's own ``compute_spec_decode_metrics``
  (per-sample accepted / drafted and 1 + accepted / rounds, averaged), the names MTP rollouts log. verl counts
  a sample that never speculated as 0 in both means, so they fall with the gate's off time, not only with
  acceptance (0.33 in a run whose acceptance was forced to 0.8);
* ``rollout/er_verl/accept_rate`` = Σ accepted / Σ drafted and ``rollout/er_verl/accept_length`` = 1 + Σ accepted /
  Σ rounds, over the speculative rounds only (absent when the batch had none): the drafter's acceptance;
* ``rollout/er_verl/spec_on_fraction`` = Σ rounds / Σ decode steps (speculative rounds among all decode
  steps of the batch's samples);
* ``rollout/er_verl/mean_draft_len`` = Σ drafted / Σ rounds (mean K of the speculative rounds);
* ``rollout/er_verl/k_hist/k{K}`` = decode steps with draft length K / Σ decode steps, K = 0 (plain steps)
  to the largest K used (the K histogram, as fractions of the batch's decode steps);
* ``rollout/er_verl/requant_ms``: the largest drafter requant time the samples carry (the requant after
  this step's weight sync; absent when no sample was in the first decode batch after it).
"""

import logging

from er_verl.rollout.metrics import DECODE_STEPS as STEPS_KEY
from er_verl.rollout.metrics import K_ROUNDS, REQUANT_MS

logger = logging.getLogger(__name__)

MODULE = "verl.trainer.ppo.v1.trainer_base"
BACKEND = "efficient_sglang"
VERL_KEYS = ("spec_num_draft_tokens", "spec_num_accepted_tokens", "spec_num_verify_steps")


def spec_metrics(extra_fields: list, keep: list) -> dict:
    """Metrics from per-sample ``extra_fields`` dicts (``keep``: non-padding mask); {} when any sample lacks them."""
    from verl.trainer.ppo.ray_trainer import compute_spec_decode_metrics

    rows = [f for f, k in zip(extra_fields, keep) if k]
    if not rows or not all(isinstance(f, dict) and all(key in f for key in VERL_KEYS) for f in rows):
        return {}
    drafts, accepts, rounds = ([int(f[key]) for f in rows] for key in VERL_KEYS)
    out = compute_spec_decode_metrics(drafts, accepts, rounds)
    steps = sum(int(f.get(STEPS_KEY, 0)) for f in rows)
    out["rollout/er_verl/spec_on_fraction"] = sum(rounds) / steps if steps else 0.0
    out["rollout/er_verl/mean_draft_len"] = sum(drafts) / sum(rounds) if sum(rounds) else 0.0
    if sum(rounds):
        out["rollout/er_verl/accept_rate"] = sum(accepts) / sum(drafts)
        out["rollout/er_verl/accept_length"] = 1 + sum(accepts) / sum(rounds)
    out.update(k_histogram([f.get(K_ROUNDS) or [] for f in rows], steps))
    requants = [float(f[REQUANT_MS]) for f in rows if f.get(REQUANT_MS)]
    if requants:
        out["rollout/er_verl/requant_ms"] = max(requants)
    return out


def k_histogram(k_rounds: list, steps: int) -> dict:
    """Fractions of ``steps`` decode steps per draft length K from per-sample [rounds at K=1, K=2, ...];
    K=0 is the rest (plain steps). {} without steps."""
    if not steps:
        return {}
    by_k = [0] * max((len(r) for r in k_rounds), default=0)
    for rounds in k_rounds:
        for i, n in enumerate(rounds):
            by_k[i] += int(n)
    out = {"rollout/er_verl/k_hist/k0": (steps - sum(by_k)) / steps}
    out.update({f"rollout/er_verl/k_hist/k{i + 1}": n / steps for i, n in enumerate(by_k)})
    return out


def wrap(original):
    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        result = original(self, batch, metrics, timing_raw, global_steps, epoch)
        try:
            if self.config.actor_rollout_ref.rollout.name == BACKEND and "rollout/spec_accept_rate" not in metrics:
                import transfer_queue as tq

                keep = [not tag.get("is_padding", False) for tag in batch.tags]
                data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
                metrics.update(spec_metrics(data.pop("extra_fields").tolist(), keep))
        except Exception:  # noqa: BLE001 - metrics never fail a training step
            logger.warning("er_verl: speculative-decoding metrics for this step failed", exc_info=True)
        return result

    _compute_metrics.er_verl_wrapped = original
    return _compute_metrics


def apply(module) -> bool:
    """Wrap ``module.PPOTrainer._compute_metrics``; False (and nothing changed) if already wrapped."""
    cls = module.PPOTrainer
    if getattr(cls._compute_metrics, "er_verl_wrapped", None) is not None:
        return False
    cls._compute_metrics = wrap(cls._compute_metrics)
    logger.info("er_verl: patched %s.PPOTrainer._compute_metrics (speculative-decoding metrics)", MODULE)
    return True
