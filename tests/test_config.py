"""EfficientConfig validation: every wrong value is a ValueError naming key, value and what is allowed."""

import re

import pytest

from er_verl.config import (
    EfficientConfig,
    check_supported,
    efficient_config_from_rollout,
    parse_efficient_config,
    unsupported_mode_reason,
)

KEY = "actor_rollout_ref.rollout.custom.efficient"


def test_defaults():
    assert parse_efficient_config(None) == EfficientConfig()
    assert parse_efficient_config({}) == EfficientConfig()


def test_valid_values_round_trip(tmp_path):
    calib = tmp_path / "calib.json"
    calib.write_text("{}")
    raw = dict(speculate=False, drafter="fp8", max_draft_len=16, gate="always", gate_margin=0,
               bandit=False, sync_discount=1, calibration_path=str(calib), seed=3, draft_kv_window=64)
    cfg = parse_efficient_config(raw)
    assert cfg.draft_kv_window == 64
    assert cfg.gate_margin == 0.0 and isinstance(cfg.gate_margin, float)
    assert cfg.sync_discount == 1.0 and cfg.max_draft_len == 16 and cfg.calibration_path == str(calib)


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("speculate", "yes", "type bool"),
        ("speculate", 1, "type bool"),
        ("drafter", "int8", "one of \\['int4', 'fp8'\\]"),
        ("drafter", 4, "type str"),
        ("max_draft_len", 0, "from 1 to 16"),
        ("max_draft_len", 17, "from 1 to 16"),
        ("max_draft_len", 3.0, "type int"),
        ("max_draft_len", True, "type int"),
        ("gate", "sometimes", "one of \\['auto', 'always', 'never'\\]"),
        ("gate_margin", -0.1, "\\[0, 1\\)"),
        ("gate_margin", 1.0, "\\[0, 1\\)"),
        ("gate_margin", "0.1", "type float"),
        ("bandit", "on", "type bool"),
        ("sync_discount", 0.0, "\\(0, 1\\]"),
        ("sync_discount", 1.5, "\\(0, 1\\]"),
        ("calibration_path", "/nonexistent/calib.json", "existing JSON file"),
        ("calibration_path", 7, "file path string"),
        ("seed", -1, ">= 0"),
        ("seed", 1.5, "type int"),
        ("draft_kv_window", 63, "0 \\(the whole context\\) or an integer from 64"),
        ("draft_kv_window", -1, "from 64 to 1048576"),
        ("draft_kv_window", 512.0, "type int"),
        ("draft_attention", "fa3", "one of \\['flashinfer', 'triton'\\]"),
    ],
)
def test_each_wrong_value_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ValueError, match="^" + re.escape(f"{KEY}.{key}={value!r} is invalid") + ".*" + allowed):
        parse_efficient_config({key: value})


def test_triton_drafts_refuse_a_draft_window():
    assert parse_efficient_config({"draft_attention": "triton"}).draft_attention == "triton"
    with pytest.raises(ValueError, match=re.escape(f"{KEY}.draft_attention='triton' is invalid: allowed is "
                                                   "'flashinfer' while draft_kv_window=512")):
        parse_efficient_config({"draft_attention": "triton", "draft_kv_window": 512})


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ValueError, match=rf"{KEY}\.max_k is not a known key: allowed keys are \[.*'max_draft_len'"):
        parse_efficient_config({"max_k": 3})


def test_non_mapping_block():
    with pytest.raises(ValueError, match="allowed is a mapping"):
        parse_efficient_config([1, 2])


def test_from_rollout_reads_custom_block():
    assert efficient_config_from_rollout({"custom": None}) == EfficientConfig()
    assert efficient_config_from_rollout({"custom": {"efficient": {"seed": 5}}}).seed == 5
    with pytest.raises(ValueError, match="rollout.custom=.*mapping"):
        efficient_config_from_rollout({"custom": 3})


@pytest.mark.parametrize(
    "rollout,lora,needle",
    [
        ({"pipeline_model_parallel_size": 2}, False, "pipeline parallelism.*tensor_model_parallel_size"),
        ({"disaggregation": {"enabled": True}}, False, "disaggregation.*rollout.name=sglang"),
        ({}, True, "LoRA.*lora.merge=True"),
    ],
)
def test_unsupported_modes_are_refused_with_what_to_use_instead(rollout, lora, needle):
    assert unsupported_mode_reason(rollout, lora) is not None
    with pytest.raises(ValueError, match=needle):
        check_supported(rollout, lora)


def test_supported_mode_passes():
    assert unsupported_mode_reason({"pipeline_model_parallel_size": 1, "disaggregation": {"enabled": False}}, False) is None
    check_supported({}, False)
