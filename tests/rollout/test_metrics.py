from types import SimpleNamespace

from er_verl.engine.spec_round import (DRAFTED_TAG, K_ROUNDS_TAG, REQUANT_TAG, ROUNDS_TAG, RoundCounts, ensure_tags,
                                       tag_requant, tag_round_counts)
from er_verl.rollout.metrics import K_ROUNDS, REQUANT_MS, VERL_KEYS, spec_extra_fields


def test_drafts_and_rounds_come_from_the_worker_tags_and_accepted_from_sglang():
    """SGLang's proposed count (verify passes x Kmax, K=0 steps included) and verify count are not used."""
    meta = {"spec_verify_ct": 10, "spec_num_correct_drafts": 7, "spec_num_proposed_drafts": 40,
            DRAFTED_TAG: [3, 3, 3, 5, 5], ROUNDS_TAG: [1, 1, 1, 2, 2]}
    assert spec_extra_fields(meta, True) == {
        "spec_num_draft_tokens": 5, "spec_num_accepted_tokens": 7, "spec_num_verify_steps": 2, K_ROUNDS: [],
    }
    assert spec_extra_fields({"spec_accepted_drafts": 3, DRAFTED_TAG: [4], ROUNDS_TAG: [1]}, True)[
        "spec_num_accepted_tokens"] == 3


def test_request_that_never_speculated_reports_zeros_so_the_batch_stays_complete():
    zeros = {**dict.fromkeys(VERL_KEYS, 0), K_ROUNDS: []}
    assert spec_extra_fields({}, True) == zeros
    assert spec_extra_fields(None, True) == zeros
    only_k0 = {"spec_verify_ct": 12, "spec_num_correct_drafts": 0, "spec_num_proposed_drafts": 48}
    assert spec_extra_fields(only_k0, True) == zeros


def test_not_speculating_reports_nothing():
    assert spec_extra_fields({"spec_verify_ct": 3}, False) == {}


def test_round_tags_carry_running_totals_to_the_last_token():
    """Round 1 (K=3) emits 2 tokens, two plain steps follow, round 2 (K=2) emits 3: the last streamed
    token carries 5 drafted tokens and 2 rounds; tokens of plain steps in between keep the earlier totals."""
    req = SimpleNamespace(customized_info=None, output_ids=[11])
    tag_round_counts([req], 3)
    req.output_ids += [12, 13]  # the round's 2 tokens
    req.output_ids += [14, 15]  # two K=0 steps: no tags written
    tag_round_counts([req], 2)
    req.output_ids += [16, 17, 18]
    drafted, rounds = req.customized_info[DRAFTED_TAG], req.customized_info[ROUNDS_TAG]
    streamed = slice(0, len(req.output_ids))  # SGLang streams tags[offset:len(output_ids)]
    assert drafted[streamed] == [0, 3, 3, 3, 3, 5, 5, 5] and rounds[streamed] == [0, 1, 1, 1, 1, 2, 2, 2]
    by_k = req.customized_info[K_ROUNDS_TAG][streamed]
    assert by_k[0] == 0 and by_k[1:5] == [[0, 0, 1]] * 4 and by_k[5:] == [[0, 1, 1]] * 3  # rounds of K=1, 2, 3
    meta = {DRAFTED_TAG: drafted[streamed], ROUNDS_TAG: rounds[streamed], K_ROUNDS_TAG: by_k,
            "spec_num_correct_drafts": 3}
    assert spec_extra_fields(meta, True) == {
        "spec_num_draft_tokens": 5, "spec_num_accepted_tokens": 3, "spec_num_verify_steps": 2, K_ROUNDS: [0, 1, 1],
    }


def test_verl_trainer_reads_the_mapped_fields():
    """verl's own aggregation turns the fields into acceptance = accepted / drafted, length = 1 + accepted / rounds."""
    import numpy as np
    from verl.trainer.ppo.ray_trainer import compute_spec_decode_metrics

    rows = [spec_extra_fields({"spec_num_correct_drafts": 15, DRAFTED_TAG: [30], ROUNDS_TAG: [10]}, True),
            spec_extra_fields({"spec_num_correct_drafts": 5, DRAFTED_TAG: [15], ROUNDS_TAG: [5]}, True)]
    col = {k: np.array([r[k] for r in rows]) for k in VERL_KEYS}
    out = compute_spec_decode_metrics(col["spec_num_draft_tokens"], col["spec_num_accepted_tokens"], col["spec_num_verify_steps"])
    assert abs(out["rollout/spec_accept_rate"] - (0.5 + 1 / 3) / 2) < 1e-9
    assert abs(out["rollout/spec_accept_length"] - (2.5 + 2.0) / 2) < 1e-9


class Req(SimpleNamespace):
    def finished(self) -> bool:
        return self.done


def _req(**kw):
    return Req(customized_info=None, output_ids=[1], done=False, is_retracted=False, **kw)


def test_round_counts_skip_a_round_launched_after_the_request_finished():
    """Overlap scheduler: round 2 launches before round 1's result is processed; the request finishes on
    round 1's tokens, so round 2's output is discarded and (as in SGLang's spec_verify_ct) not counted."""
    counts, req = RoundCounts(), _req()
    counts.launched([req], 3)
    counts.launched([req], 3)
    counts.processed(1)
    req.output_ids += [2, 3, 4, 5]
    req.done = True
    counts.processed(1)
    assert (req.er_verl_drafted, req.er_verl_spec_rounds) == (3, 1)
    assert req.customized_info[ROUNDS_TAG][len(req.output_ids) - 1] == 1
    assert not counts.pending


def test_round_counts_consume_plain_steps_and_skip_retracted_requests():
    counts, a, b = RoundCounts(), _req(), _req()
    counts.launched([a, b], 0)  # a K=0 step: consumed in order, nothing counted
    counts.launched([a, b], 2)
    b.is_retracted = True
    counts.processed(2)
    counts.processed(2)
    assert (a.er_verl_drafted, a.er_verl_spec_rounds) == (2, 1)
    assert not hasattr(b, "er_verl_drafted") and b.customized_info is None


def test_round_counts_drop_stale_launches_when_a_result_matches_none():
    """A launch whose result never comes (its batch size differs from the next result's) is dropped."""
    counts, a, b = RoundCounts(), _req(), _req()
    counts.launched([a, b], 3)
    counts.launched([a], 2)
    counts.processed(1)
    assert (a.er_verl_drafted, a.er_verl_spec_rounds) == (2, 1) and not hasattr(b, "er_verl_drafted")
    counts.processed(5)  # nothing pending matches: a no-op, not an error
    assert not counts.pending


def test_requant_time_reaches_the_requests_of_the_batch_it_preceded():
    """The worker tags the first decode batch after a requant; a request of a later batch has the key
    (ensure_tags) but no value, and reports no requant time."""
    first, later = _req(), _req()
    ensure_tags([first, later])
    tag_requant([first], 41.5)
    first.output_ids += [2, 3]
    assert spec_extra_fields({REQUANT_TAG: first.customized_info[REQUANT_TAG]}, True)[REQUANT_MS] == 41.5
    assert REQUANT_MS not in spec_extra_fields({REQUANT_TAG: later.customized_info[REQUANT_TAG]}, True)
