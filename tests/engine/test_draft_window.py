"""The drafter's windowed KV view (draft_window): sinks + the last W positions, planned over that many."""

import pytest
import torch

from er_verl.engine import draft_window
from er_verl.engine.draft_window import SINKS


class FakeWrapper:
    def __init__(self, size: int):
        self._paged_kv_indices_buf = torch.full((size,), -1, dtype=torch.int32)


class FakeUpdater:
    """SGLang's FlashInferIndicesUpdaterDecode as far as the wrapper uses it: ``call_begin_forward`` writes
    kv_indptr and, per request, the slots of positions [kv_start, kv_start + len) (the Triton kernel), then
    plans from the host lengths."""

    def __init__(self, req_to_token: torch.Tensor, size: int = 4096):
        self.req_to_token = req_to_token
        self.kv_indptr = [torch.zeros(65, dtype=torch.int32)]
        self.decode_wrappers = [FakeWrapper(size)]
        self.planned = []

    def call_begin_forward(self, wrapper, req_pool_indices, lens, lens_sum, kv_indptr, kv_start_idx, spec_info,
                           seq_lens_cpu, fixed_split_size=None, disable_split_kv=None):
        bs = len(req_pool_indices)
        kv_indptr[1:bs + 1] = torch.cumsum(lens, 0)
        start = torch.zeros_like(lens) if kv_start_idx is None else kv_start_idx
        for i in range(bs):
            a = int(kv_indptr[i])
            pos = torch.arange(int(start[i]), int(start[i]) + int(lens[i]))
            wrapper._paged_kv_indices_buf[a:a + int(lens[i])] = self.req_to_token[int(req_pool_indices[i]), pos]
        self.planned.append((lens_sum, None if seq_lens_cpu is None else seq_lens_cpu.tolist()))

    def update(self, *args, **kwargs):
        raise AssertionError("replaced by install()")


def _table(rows: int = 4, width: int = 1000) -> torch.Tensor:
    # slot of (request r, position p) = 10_000 r + p: every entry tells where it came from
    return (10_000 * torch.arange(rows)[:, None] + torch.arange(width)[None, :]).to(torch.int32)


def _per_request(updater, lens):
    buf, indptr = updater.decode_wrappers[0]._paged_kv_indices_buf, updater.kv_indptr[0]
    return [buf[int(indptr[i]):int(indptr[i]) + n].tolist() for i, n in enumerate(lens)]


def test_a_draft_step_sees_the_sinks_and_the_last_w_positions():
    table = _table()
    up = FakeUpdater(table)
    assert draft_window.install(type("FlashInferAttnBackend", (), {"indices_updater_decode": up})(), 64) is None
    seq_lens = torch.tensor([3, 10, 600, 69])  # shorter than the sinks, inside the window, far past it, at the edge
    rows = torch.tensor([2, 0, 3, 1])
    up.update(rows, seq_lens, seq_lens.clone(), int(seq_lens.sum()), decode_wrappers=None, encoder_lens=None,
              spec_info=None)
    lens = [3, 10, SINKS + 64, SINKS + 64]
    got = _per_request(up, lens)
    assert got[0] == [20_000, 20_001, 20_002]
    assert got[1] == list(range(10))
    assert got[2] == [30_000 + p for p in range(SINKS)] + [30_000 + p for p in range(600 - 64, 600)]
    assert got[3] == [10_000 + p for p in range(SINKS)] + [10_000 + p for p in range(69 - 64, 69)]
    assert up.planned == [(sum(lens), lens)]  # FlashInfer plans over the windowed lengths, from the host copy
    assert up.update.calls == 1


def test_without_host_lengths_the_buffer_size_is_an_upper_bound_and_nothing_syncs():
    up = FakeUpdater(_table())
    draft_window.install(type("B", (), {"indices_updater_decode": up})(), 100)
    seq_lens = torch.tensor([500, 7])
    up.update(torch.tensor([0, 1]), seq_lens, None, 507)
    assert up.planned == [(min(507, 2 * (SINKS + 100)), None)]
    assert _per_request(up, [SINKS + 100, 7])[1] == [10_000 + p for p in range(7)]
    up.update(torch.tensor([0, 1]), seq_lens, None, None)  # a batch without a host length sum either
    assert up.planned[-1] == (2 * (SINKS + 100), None)


def test_write_sinks_leaves_other_requests_entries_alone():
    table = _table()
    indices = torch.arange(20, dtype=torch.int32) + 90_000
    indptr = torch.tensor([0, 1, 11, 20], dtype=torch.int32)  # lengths 1, 10, 9
    draft_window.write_sinks(indices, indptr, table, torch.tensor([1, 2, 3]), torch.tensor([1, 10, 9]))
    assert indices[0].item() == 10_000  # one position: its own slot, written once
    assert indices[1:1 + SINKS].tolist() == [20_000 + p for p in range(SINKS)]
    assert indices[1 + SINKS:11].tolist() == [90_000 + p for p in range(1 + SINKS, 11)]
    assert indices[11:11 + SINKS].tolist() == [30_000 + p for p in range(SINKS)]
    assert indices[11 + SINKS:].tolist() == [90_000 + p for p in range(11 + SINKS, 20)]


def test_install_refuses_what_it_cannot_window():
    assert draft_window.install(object(), 0) is None  # off: nothing to do
    assert "not FlashInfer's" in draft_window.install(type("TritonAttnBackend", (), {})(), 256)
    two = type("B", (), {"indices_updater_decode": FakeUpdater(_table()), "num_wrappers": 2})()
    assert "two FlashInfer wrappers" in draft_window.install(two, 256)
    with pytest.raises(ValueError, match="draft_kv_window 32 is invalid: allowed is 0 \\(off\\) or >= 64"):
        draft_window.install(type("B", (), {"indices_updater_decode": FakeUpdater(_table())})(), 32)
