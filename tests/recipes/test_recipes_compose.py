"""recipes/{grpo,ppo,extend}: each run script's command (DRY_RUN=1) composes with Hydra into the config it
promises, for ROLLOUT=efficient_sglang and ROLLOUT=sglang, and passes the checks verl's main_ppo runs
before it starts Ray; the custom reward scores as documented; the verl pin agrees everywhere."""

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import warnings

import pytest

hydra = pytest.importorskip("hydra")
verl = pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402

from er_verl.config import EfficientConfig, efficient_config_from_rollout  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RECIPES = os.path.join(ROOT, "recipes")
SCRIPTS = {
    "grpo": "grpo/run_grpo_gsm8k.sh",
    "ppo": "ppo/run_ppo_gsm8k.sh",
    "extend": "extend/run_grpo_strict_reward.sh",
}
YAMLS = {"grpo": "grpo/config/grpo_gsm8k.yaml", "ppo": "ppo/config/ppo_gsm8k.yaml"}
AGENT_LOOPS = {"efficient_sglang": "efficient_single_turn_agent", "sglang": "single_turn_agent"}
REWARD_FILE = os.path.join(RECIPES, "extend", "strict_gsm8k_reward.py")
EFFICIENT = "actor_rollout_ref.rollout.custom.efficient"

# Two GSM8K rows per split, in openai/grade-school-math's jsonl format.
GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 1,200 pens; 200 are sold. How many are left?", "answer": "1200 - 200 = 1000\n#### 1,000"},
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """dry_run(recipe, rollout="efficient_sglang", *overrides) -> (argv, composed cfg), cached per arguments.

    The first call also runs the script's data preparation (GSM8K jsonl → parquet in DATA_DIR)."""
    tmp = tmp_path_factory.mktemp("recipes")
    src = tmp / "gsm8k_jsonl"
    src.mkdir()
    for split in ("train", "test"):
        (src / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS))
    base_env = script_env(DATA_DIR=str(tmp / "data"), GSM8K_SRC=str(src))
    cache = {}

    def run(recipe, rollout="efficient_sglang", *overrides):
        key = (recipe, rollout, overrides)
        if key not in cache:
            argv = run_script(recipe, {**base_env, "ROLLOUT": rollout}, *overrides).splitlines()
            cache[key] = (argv, compose_command(argv))
        return cache[key]

    run.data_dir = str(tmp / "data")
    return run


def script_env(**env):
    """The run scripts' environment: print the command instead of running it, with this interpreter."""
    return {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **env}


def run_script(recipe, env, *args, expect_rc=0, cwd=ROOT):
    script = os.path.join(RECIPES, SCRIPTS[recipe])
    proc = subprocess.run(["bash", script, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == expect_rc, proc.stderr[-3000:]
    return proc.stdout if expect_rc == 0 else proc.stderr


def compose_command(argv):
    """Compose what ``python -m verl.trainer.main_ppo --config-path=P --config-name=N overrides...`` would."""
    from hydra import compose, initialize_config_dir

    assert argv[:3] == [sys.executable, "-m", "verl.trainer.main_ppo"], argv[:3]
    config_path = argv[3].removeprefix("--config-path=")
    config_name = argv[4].removeprefix("--config-name=")
    with initialize_config_dir(config_dir=config_path, version_base=None):
        return compose(config_name=config_name, overrides=argv[5:])


def verl_sources_matching(pattern):
    """Paths (relative to the installed verl package) of verl's .py files whose text matches ``pattern``."""
    root = os.path.dirname(verl.__file__)
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
        if name.endswith(".py") and re.search(pattern, open(os.path.join(folder, name), errors="replace").read())
    )


def rollout_dataclass(cfg):
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)


@pytest.mark.parametrize("recipe", sorted(YAMLS))
def test_yaml_declares_every_efficient_key_with_a_comment(recipe):
    path = os.path.join(RECIPES, YAMLS[recipe])
    raw = OmegaConf.load(path)
    assert list(raw.hydra.searchpath) == ["pkg://verl.trainer.config"]
    assert list(raw.defaults) == ["ppo_trainer", "_self_"]
    declared = OmegaConf.to_container(OmegaConf.select(raw, EFFICIENT))
    assert declared == dataclasses.asdict(EfficientConfig())  # every key, at its documented default
    lines = open(path).read().splitlines()
    for name in EfficientConfig.field_names():
        (i,) = [i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:") and line.startswith(" " * 8)]
        assert lines[i - 1].strip().startswith("#"), f"{YAMLS[recipe]}: no comment above {name}"


@pytest.mark.parametrize("rollout", sorted(AGENT_LOOPS))
@pytest.mark.parametrize("recipe", sorted(SCRIPTS))
def test_run_script_composes_for_both_backends(dry_run, recipe, rollout):
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY

    _, cfg = dry_run(recipe, rollout)
    rollout_cfg = rollout_dataclass(cfg)
    assert rollout_cfg.name == rollout
    assert rollout_cfg.agent.default_agent_loop == AGENT_LOOPS[rollout]
    assert (rollout, "async") in _ROLLOUT_REGISTRY
    assert AGENT_LOOPS[rollout] in _agent_loop_registry
    # The block stays under sglang too (verl never reads rollout.custom, see below) and stays valid.
    assert efficient_config_from_rollout(rollout_cfg) == EfficientConfig()

    grpo = recipe != "ppo"
    assert cfg.algorithm.adv_estimator == ("grpo" if grpo else "gae")
    assert rollout_cfg.n == (5 if grpo else 1)
    with pytest.warns(UserWarning, match="Disabled critic") if grpo else contextlib.nullcontext():
        assert need_critic(cfg) is not grpo
    assert need_reference_policy(cfg) is grpo
    assert cfg.data.train_files == os.path.join(dry_run.data_dir, "train.parquet")
    assert cfg.data.val_files == os.path.join(dry_run.data_dir, "test.parquet")
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    if not grpo:
        assert cfg.critic.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
        assert cfg.critic.model.override_config.attn_implementation == "sdpa"
    assert cfg.trainer.n_gpus_per_node == 1
    assert cfg.trainer.experiment_name == f"Qwen2.5-0.5B-Instruct_{rollout}"
    reward_path = REWARD_FILE if recipe == "extend" else None
    assert cfg.reward.custom_reward_function.path == reward_path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A model folder with only a tokenizer and a tiny Qwen2 config: what verl's HFModelConfig reads."""
    from transformers import Qwen2Config

    from er_verl.models.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("models") / "tiny"
    build_tokenizer([row["question"] + " " + row["answer"] for row in GSM8K_ROWS] * 20, 512, str(out))
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    Qwen2Config(vocab_size=512, num_key_value_heads=1, architectures=["Qwen2ForCausalLM"], **shape).save_pretrained(out)
    return out


@pytest.mark.parametrize("ngpus", ["1", "8"])
@pytest.mark.parametrize("recipe", ["grpo", "ppo"])
def test_main_ppo_checks_pass_with_a_local_model_folder(dry_run, tiny_model_dir, recipe, ngpus):
    """What main_ppo runs before Ray (validate_config, which builds the critic's HFModelConfig), on CPU."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    # MODEL is a relative folder: the script makes it absolute.
    env = script_env(DATA_DIR=dry_run.data_dir, MODEL=tiny_model_dir.name, NGPUS=ngpus)
    tp = "2" if ngpus == "8" else "1"  # the README's 8-GPU line
    tp_override = f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp}"
    cfg = compose_command(run_script(recipe, env, tp_override, cwd=tiny_model_dir.parent).splitlines())
    assert cfg.actor_rollout_ref.model.path == str(tiny_model_dir)
    assert cfg.trainer.n_gpus_per_node == int(ngpus)
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == int(tp)
    if recipe == "ppo":
        assert cfg.critic.model.path == str(tiny_model_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Disabled critic")
        validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_prepared_parquet_is_verl_gsm8k(dry_run):
    import pandas as pd

    dry_run("grpo")
    df = pd.read_parquet(os.path.join(dry_run.data_dir, "test.parquet"))
    assert list(df.data_source) == ["openai/gsm8k"] * 2
    assert [row["ground_truth"] for row in df.reward_model] == ["7", "1000"]


def test_efficient_keys_override_without_plus(dry_run):
    _, cfg = dry_run("grpo", "efficient_sglang", f"{EFFICIENT}.max_draft_len=5", f"{EFFICIENT}.drafter=fp8")
    assert efficient_config_from_rollout(rollout_dataclass(cfg)) == EfficientConfig(max_draft_len=5, drafter="fp8")
    _, cfg = dry_run("ppo", "efficient_sglang", f"{EFFICIENT}.gate=sometimes")
    with pytest.raises(ValueError, match=re.escape(f"{EFFICIENT}.gate='sometimes'")):
        efficient_config_from_rollout(rollout_dataclass(cfg))


def test_readme_overrides_compose(dry_run):
    _, cfg = dry_run(
        "grpo",
        "sglang",
        "+data.apply_chat_template_kwargs.enable_thinking=False",  # Qwen3 without thinking
        "trainer.logger=[console,wandb]",
        "actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2",
        "trainer.total_training_steps=20",
    )
    assert cfg.data.apply_chat_template_kwargs == {"enable_thinking": False}
    assert list(cfg.trainer.logger) == ["console", "wandb"]
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "flash_attention_2"
    assert cfg.trainer.total_training_steps == 20


def test_run_script_refuses_unknown_backend_and_missing_data(tmp_path):
    env = script_env(DATA_DIR=str(tmp_path))
    assert "use efficient_sglang or sglang" in run_script("grpo", {**env, "ROLLOUT": "vllm"}, expect_rc=2)
    assert "GSM8K_SRC" in run_script("ppo", env, expect_rc=2)


def test_verl_never_reads_rollout_custom():
    """Why custom.efficient can stay in the config under ROLLOUT=sglang: no verl code reads ``.custom``."""
    assert verl_sources_matching(r"""\.custom\b|\[\s*["']custom["']\s*\]|get\(\s*["']custom["']""") == []


# ---- the extend recipe: a custom reward through verl's own loader -------------------------------------

CASES = [  # (response, ground truth, strict score, strict format, verl's default GSM8K score)
    ("3 + 4 = 7 apples.\n#### 7", "7", 1.0, 1.0, 1.0),
    ("1200 - 200 = 1000\n#### 1,000\n", "1000", 1.0, 1.0, 1.0),
    ("#### -3", "-3", 1.0, 1.0, 1.0),
    ("3 + 4 = 8\n#### 8", "7", 0.0, 1.0, 0.0),  # well formed, wrong: format_score (0.0 by default)
    ("#### 7\nHope this helps!", "7", 0.0, 0.0, 1.0),  # text after the answer line
    ("First guess #### 6, no:\n#### 7", "7", 0.0, 0.0, 1.0),  # two answers; verl takes the last
    ("The answer is 7.", "7", 0.0, 0.0, 0.0),  # no marker
    ("####7", "7", 0.0, 0.0, 0.0),  # no space
    ("", "7", 0.0, 0.0, 0.0),
]


def custom_reward_fn(dry_run, *overrides):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    _, cfg = dry_run("extend", "efficient_sglang", *overrides)
    fn = get_custom_reward_fn(cfg)
    assert fn is not None
    return fn


@pytest.mark.parametrize("response, truth, strict, strict_format, default", CASES)
def test_strict_reward_through_verl_loader(dry_run, response, truth, strict, strict_format, default):
    from verl.utils.reward_score import default_compute_score

    fn = custom_reward_fn(dry_run)
    out = fn(data_source="openai/gsm8k", solution_str=response, ground_truth=truth, extra_info={})
    assert out == {"score": strict, "acc": strict, "strict_format": strict_format}
    assert default_compute_score("openai/gsm8k", response, truth) == default  # stricter, never looser


def test_strict_reward_kwargs_and_data_source(dry_run):
    fn = custom_reward_fn(dry_run, "+reward.custom_reward_function.reward_kwargs.format_score=0.1")
    wrong = fn(data_source="openai/gsm8k", solution_str="#### 8", ground_truth="7", extra_info={})
    assert wrong == {"score": 0.1, "acc": 0.0, "strict_format": 1.0}
    with pytest.raises(ValueError, match="openai/gsm8k"):
        fn(data_source="lighteval/MATH", solution_str="#### 7", ground_truth="7", extra_info={})


def test_legacy_top_level_custom_reward_function_is_ignored_by_main_ppo(dry_run):
    """Why the run script sets reward.custom_reward_function: verl 0.9.1 moves the legacy key over only in
    fully_async_main (migrate_legacy_reward_impl), not in main_ppo."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    _, cfg = dry_run("grpo", "efficient_sglang", f"custom_reward_function.path={REWARD_FILE}")
    assert get_custom_reward_fn(cfg) is None
    # Its definition, and its one caller.
    assert verl_sources_matching(r"migrate_legacy_reward_impl\(") == [
        "experimental/fully_async_policy/fully_async_main.py",
        "experimental/reward_loop/reward_loop.py",
    ]


# ---- the pin -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["grpo", "ppo", "extend"])
def test_required_verl_matches_installed_and_pyproject(recipe):
    required = open(os.path.join(RECIPES, recipe, "REQUIRED_VERL.txt")).read().split()
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    assert required == [f"verl=={importlib.metadata.version('verl')}"]
    assert required[0] in deps
