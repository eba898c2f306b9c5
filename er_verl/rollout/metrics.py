"""Speculative-decoding metrics under the names verl's trainer reads.

verl 0.9.1 reads ``spec_draft_token_num`` / ``spec_accept_token_num`` from SGLang's ``meta_info``;
SGLang 0.5.14 never emits them, so stock verl always reports acceptance 0. SGLang does emit accepted drafts
(``spec_num_correct_drafts``, alias ``spec_accepted_drafts``), but counts proposed drafts as verify passes
× Kmax, K=0 steps included, which overstates them when K varies per batch. So drafted tokens and
speculative rounds come from the self-draft worker's own per-request running totals
(``spec_round.tag_round_counts``: per-token ``customized_info`` that reaches ``meta_info`` as lists; a
request without them never speculated: zeros). Acceptance = accepted / drafted, accepted length =
1 + accepted / rounds.

verl's trainer (``compute_spec_decode_metrics``) wants three per-sample ``extra_fields`` and needs all
of them on every sample of a batch, so a request that never verified reports zeros. ``er_decode_steps``
(all decode steps, speculative or plain) lets the v1-trainer patch (``patches/verl_0_9_1``) log the
fraction of steps that speculated; ``er_k_rounds`` (the request's rounds per draft length) its K histogram;
``er_requant_ms`` the drafter's requant time, on requests of the first decode batch after a requant.
"""

from typing import Any, Mapping

from er_verl.engine.spec_round import DRAFTED_TAG, K_ROUNDS_TAG, REQUANT_TAG, ROUNDS_TAG

VERL_KEYS = ("spec_num_draft_tokens", "spec_num_accepted_tokens", "spec_num_verify_steps")
DECODE_STEPS = "er_decode_steps"  # ours: decode steps of the request (speculative rounds + plain steps)
K_ROUNDS = "er_k_rounds"  # ours: [rounds with K=1, K=2, ...] of the request
REQUANT_MS = "er_requant_ms"  # ours: the drafter requant before this request's first decode step, if it ran then
_ACCEPTED = ("spec_num_correct_drafts", "spec_accepted_drafts")  # SGLang's accepted drafts (exact) and its alias


def spec_extra_fields(meta_info: Mapping[str, Any] | None, speculating: bool) -> dict[str, int]:
    """verl ``extra_fields`` for one request of a self-draft server: drafted tokens and speculative rounds
    from the worker's tags, accepted drafts from SGLang; {} when the server is not speculating."""
    if not speculating:
        return {}
    meta = meta_info or {}
    accepted = next((int(meta[name]) for name in _ACCEPTED if meta.get(name) is not None), 0)
    rounds = _last(meta.get(ROUNDS_TAG))
    fields = {"spec_num_draft_tokens": _last(meta.get(DRAFTED_TAG)), "spec_num_accepted_tokens": accepted,
              "spec_num_verify_steps": rounds}
    if meta.get("completion_tokens") is not None:
        fields[DECODE_STEPS] = decode_steps(int(meta["completion_tokens"]), accepted, rounds)
    by_k = (meta.get(K_ROUNDS_TAG) or [None])[-1]
    fields[K_ROUNDS] = [int(n) for n in by_k] if isinstance(by_k, (list, tuple)) else []
    requant = (meta.get(REQUANT_TAG) or [None])[-1]
    if requant:
        fields[REQUANT_MS] = float(requant)
    return fields


def decode_steps(completion_tokens: int, accepted: int, rounds: int) -> int:
    """Decode steps of one request: completion = 1 (prefill) + Σ_rounds (accepted + 1) + plain steps, so
    steps = rounds + plain = completion − 1 − accepted. A last round cut by the length limit can make that
    fall below ``rounds``; the count is then ``rounds``."""
    return max(rounds, completion_tokens - 1 - accepted)


def _last(tag) -> int:
    """The running total carried by the last tagged token (0 for a request that never speculated)."""
    return int(tag[-1]) if tag else 0
