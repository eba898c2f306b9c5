"""Speculative-decoding metrics under the names verl's trainer reads.

verl 0.9.1 reads ``spec_draft_token_num`` / ``spec_accept_token_num`` from SGLang's ``meta_info``;
SGLang 0.5.14 never emits them, so stock verl always reports acceptance 0. SGLang emits, per finished
request and only when it verified at least once:

    spec_verify_ct            verify passes (K=0 steps included)
    spec_num_correct_drafts   accepted draft tokens (bonus excluded); alias spec_accepted_drafts
    spec_num_proposed_drafts  proposed draft tokens; alias spec_proposed_drafts

verl's trainer (``compute_spec_decode_metrics``) wants three per-sample ``extra_fields`` and needs all
of them on every sample of a batch, so a request that never verified reports zeros.
"""

from typing import Any, Mapping

VERL_KEYS = ("spec_num_draft_tokens", "spec_num_accepted_tokens", "spec_num_verify_steps")
_SGLANG_SOURCES = {
    "spec_num_draft_tokens": ("spec_num_proposed_drafts", "spec_proposed_drafts"),
    "spec_num_accepted_tokens": ("spec_num_correct_drafts", "spec_accepted_drafts"),
    "spec_num_verify_steps": ("spec_verify_ct",),
}


def _first(meta: Mapping[str, Any], names: tuple[str, ...]) -> int:
    for name in names:
        value = meta.get(name)
        if value is not None:
            return int(value)
    return 0


def spec_extra_fields(meta_info: Mapping[str, Any] | None, speculating: bool) -> dict[str, int]:
    """verl ``extra_fields`` for one request: the three spec counters, or {} when not speculating."""
    if not speculating:
        return {}
    meta = meta_info or {}
    return {verl_key: _first(meta, sources) for verl_key, sources in _SGLANG_SOURCES.items()}
