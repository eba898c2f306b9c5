"""verl's ppo_trainer composed with Hydra and the efficient overrides → the typed EfficientConfig."""

import os
import re

import pytest

hydra = pytest.importorskip("hydra")
verl = pytest.importorskip("verl")

from er_verl.config import EfficientConfig, efficient_config_from_rollout  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
SMOKE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "smoke", "run_grpo_smoke.sh")


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def rollout_dataclass(cfg):
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)


def test_efficient_overrides_compose_into_typed_config():
    cfg = compose(
        [
            "actor_rollout_ref.rollout.name=efficient_sglang",
            "actor_rollout_ref.rollout.agent.default_agent_loop=efficient_single_turn_agent",
            "+actor_rollout_ref.rollout.custom.efficient.max_draft_len=5",
            "+actor_rollout_ref.rollout.custom.efficient.drafter=fp8",
            "+actor_rollout_ref.rollout.custom.efficient.gate_margin=0.1",
        ]
    )
    rollout = rollout_dataclass(cfg)
    assert rollout.name == "efficient_sglang"
    eff = efficient_config_from_rollout(rollout)
    assert eff == EfficientConfig(max_draft_len=5, drafter="fp8", gate_margin=0.1)


def test_defaults_without_custom_block():
    rollout = rollout_dataclass(compose(["actor_rollout_ref.rollout.name=efficient_sglang"]))
    assert efficient_config_from_rollout(rollout) == EfficientConfig()


def test_wrong_value_in_composed_config_names_key():
    rollout = rollout_dataclass(
        compose(["actor_rollout_ref.rollout.name=efficient_sglang", "+actor_rollout_ref.rollout.custom.efficient.gate=sometimes"])
    )
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.custom\.efficient\.gate='sometimes'"):
        efficient_config_from_rollout(rollout)


def _smoke_overrides():
    """The Hydra overrides of recipes/smoke/run_grpo_smoke.sh, with its shell variables filled in."""
    lines = open(SMOKE).read().split("python -m verl.trainer.main_ppo", 1)[-1].split("$PY -m verl.trainer.main_ppo")[-1]
    out = []
    for line in lines.splitlines():
        token = line.strip().rstrip("\\").strip()
        if "=" in token and not token.startswith(("#", '"$')):
            token = token.replace('"$WORK', "/tmp/w").replace('"$ROLLOUT"', "efficient_sglang").replace('"$STEPS"', "2")
            out.append(token.replace('"', "").replace("'", ""))
    return out


def test_smoke_recipe_overrides_compose():
    overrides = _smoke_overrides()
    assert "actor_rollout_ref.rollout.name=efficient_sglang" in overrides
    cfg = compose(overrides + ["actor_rollout_ref.rollout.agent.default_agent_loop=efficient_single_turn_agent"])
    assert cfg.trainer.total_training_steps == 2
    assert rollout_dataclass(cfg).n == 4


def _e2e_8b_overrides():
    """The Hydra overrides PHASE=8 of recipes/smoke/device_spec_e2e.sh adds to the smoke recipe's."""
    script = open(os.path.join(os.path.dirname(SMOKE), "device_spec_e2e.sh")).read()
    block = script.split("  8)", 1)[1].split(";;", 1)[0]
    call = block.split("run_grpo_smoke.sh", 1)[1].split(">", 1)[0]
    call = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", call)  # ${TRAIN_BS:-32} -> the default
    return [t.strip('"') for t in call.replace("\\\n", " ").split() if "=" in t]


def test_8b_systems_run_overrides_compose_with_sgd_and_the_group_agent_loop():
    extra = _e2e_8b_overrides()
    cfg = compose(_smoke_overrides() + extra)
    actor = cfg.actor_rollout_ref.actor
    assert actor.optim.optimizer == "SGD" and actor.ppo_micro_batch_size_per_gpu == 2
    assert cfg.data.max_response_length == 2048 and rollout_dataclass(cfg).n == 8  # later overrides win
    assert cfg.data.train_batch_size == 32 == actor.ppo_mini_batch_size  # the ${VAR:-default} values
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "efficient_single_turn_agent"
    assert cfg.actor_rollout_ref.model.enable_gradient_checkpointing is True
    assert list(cfg.trainer.logger) == ["console", "file"]
