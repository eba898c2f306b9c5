from er_verl.rollout.metrics import VERL_KEYS, spec_extra_fields


def test_sglang_0_5_14_keys_map_to_verl_names():
    meta = {"spec_verify_ct": 10, "spec_num_correct_drafts": 17, "spec_num_proposed_drafts": 30, "spec_accept_rate": 0.57}
    assert spec_extra_fields(meta, True) == {
        "spec_num_draft_tokens": 30, "spec_num_accepted_tokens": 17, "spec_num_verify_steps": 10,
    }


def test_aliases_are_read():
    meta = {"spec_verify_ct": 2, "spec_accepted_drafts": 3, "spec_proposed_drafts": 6}
    assert spec_extra_fields(meta, True) == {
        "spec_num_draft_tokens": 6, "spec_num_accepted_tokens": 3, "spec_num_verify_steps": 2,
    }


def test_request_that_never_verified_reports_zeros_so_the_batch_stays_complete():
    assert spec_extra_fields({}, True) == dict.fromkeys(VERL_KEYS, 0)
    assert spec_extra_fields(None, True) == dict.fromkeys(VERL_KEYS, 0)


def test_not_speculating_reports_nothing():
    assert spec_extra_fields({"spec_verify_ct": 3}, False) == {}


def test_verl_trainer_reads_the_mapped_fields():
    """verl's own aggregation turns the mapped fields into a non-zero acceptance."""
    import numpy as np
    from verl.trainer.ppo.ray_trainer import compute_spec_decode_metrics

    rows = [spec_extra_fields({"spec_verify_ct": 10, "spec_num_correct_drafts": 15, "spec_num_proposed_drafts": 30}, True),
            spec_extra_fields({"spec_verify_ct": 5, "spec_num_correct_drafts": 5, "spec_num_proposed_drafts": 15}, True)]
    col = {k: np.array([r[k] for r in rows]) for k in VERL_KEYS}
    out = compute_spec_decode_metrics(col["spec_num_draft_tokens"], col["spec_num_accepted_tokens"], col["spec_num_verify_steps"])
    assert abs(out["rollout/spec_accept_rate"] - (0.5 + 1 / 3) / 2) < 1e-9
    assert abs(out["rollout/spec_accept_length"] - (2.5 + 2.0) / 2) < 1e-9
