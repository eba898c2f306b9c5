"""CPU tests of the sync-free resolve (er_verl/engine/sync_free.py) and the decode call's K hand-over."""

import types

import pytest
import torch

from er_verl.engine import sync_free
from er_verl.engine.draft_window import SINKS
from er_verl.engine.self_spec import SelfSpecMixin


def test_eligible_needs_the_window_graphs_and_lengths_past_the_window():
    long = torch.tensor([SINKS + 512, 4000])
    assert sync_free.eligible(long, 512, 2, 64)
    assert not sync_free.eligible(long, 0, 2, 64)                       # no window: drafts plan from real lengths
    assert not sync_free.eligible(long, 512, 2, 1)                      # past the graphs: eager steps
    assert not sync_free.eligible(torch.tensor([SINKS + 511, 4000]), 512, 2, 64)  # one request still inside it
    assert not sync_free.eligible(None, 512, 2, 64)
    assert not sync_free.eligible(long, 512, 3, 64)                     # lengths of another batch


def test_eligible_without_a_window_when_the_draft_backend_plans_on_the_gpu():
    short = torch.tensor([3, 40])
    assert sync_free.eligible(short, 0, 2, 64, gpu_planned=True)        # triton drafts: any length
    assert not sync_free.eligible(short, 0, 2, 64)
    assert not sync_free.eligible(short, 0, 2, 1, gpu_planned=True)     # past the graphs: eager steps
    assert not sync_free.eligible(None, 0, 2, 64, gpu_planned=True)


def test_enabled_parses_with_a_sentence():
    assert sync_free.enabled({}) and not sync_free.enabled({"ER_VERL_SYNC_FREE": "0"})
    with pytest.raises(ValueError, match="ER_VERL_SYNC_FREE='yes'"):
        sync_free.enabled({"ER_VERL_SYNC_FREE": "yes"})


class _Worker:
    def __init__(self, k):
        self.k, self.pending_lengths, self.asked = k, None, 0

    def presync_k(self, batch):
        self.asked += 1
        return self.k


def _setup(k, monkeypatch):
    ready = types.SimpleNamespace(waited=0)
    ready.wait = lambda: setattr(ready, "waited", ready.waited + 1)
    future_map = types.SimpleNamespace(publish_ready=ready, new_seq_lens_buf=torch.tensor([0, 700, 0, 900, 650]))
    batch = types.SimpleNamespace(spec_info=types.SimpleNamespace(future_indices=torch.tensor([1, 3, 4])),
                                  seq_lens=torch.tensor([600, 850, 640]), seq_lens_cpu=torch.tensor([600, 850, 640]),
                                  seq_lens_sum=None)
    worker = _Worker(k)
    monkeypatch.setitem(sync_free.ACTIVE, "worker", worker)
    calls = []
    return future_map, batch, worker, lambda fm, b: calls.append(b), calls


def test_a_speculative_batch_resolves_on_the_gpu_and_keeps_a_lower_bound_until_the_verify(monkeypatch):
    future_map, batch, worker, original, calls = _setup(2, monkeypatch)
    sync_free.resolve_around(original, future_map, batch)
    assert calls == [] and future_map.publish_ready.waited == 1
    assert batch.seq_lens.tolist() == [700, 900, 650]            # the device lengths are the new ones
    assert batch.seq_lens_cpu.tolist() == [600, 850, 640]        # the host keeps the stale lower bound
    assert batch.seq_lens_sum == 2090
    sync_free.exact_lengths(worker, batch)
    assert batch.seq_lens_cpu.tolist() == [700, 900, 650] and batch.seq_lens_sum == 2250


def test_other_batches_take_sglangs_resolve(monkeypatch):
    future_map, batch, worker, original, calls = _setup(0, monkeypatch)
    sync_free.resolve_around(original, future_map, batch)
    assert calls == [batch] and future_map.publish_ready.waited == 0 and worker.pending_lengths is None
    sync_free.exact_lengths(worker, batch)                       # nothing pending: untouched
    assert batch.seq_lens_cpu.tolist() == [600, 850, 640]
    monkeypatch.setitem(sync_free.ACTIVE, "worker", None)        # no self-spec worker in this process
    future_map, batch, worker, original, calls = _setup(3, monkeypatch)
    monkeypatch.setitem(sync_free.ACTIVE, "worker", None)
    sync_free.resolve_around(original, future_map, batch)
    assert calls == [batch] and worker.asked == 0


class _Mixin(SelfSpecMixin):
    def __init__(self):
        self.presync, self.asked = None, 0

    def round_k(self, batch):
        self.asked += 1
        return 1


def test_the_decode_call_takes_the_resolve_times_k_once_and_only_for_that_batch():
    me, batch, other = _Mixin(), object(), object()
    me.presync = (batch, 3)
    assert me.decided_k(batch) == 3 and me.asked == 0
    assert me.decided_k(batch) == 1 and me.asked == 1            # taken once
    me.presync = (batch, 0)
    assert me.decided_k(batch) == 0 and me.asked == 1            # a K=0 decision is kept too (no second choose)
    me.presync = (other, 3)
    assert me.decided_k(batch) == 1 and me.asked == 2 and me.presync is None


def test_the_worker_decides_k_at_resolve_only_for_gpu_planned_or_windowed_decode_batches_past_the_window():
    from er_verl.engine.worker import SelfSpecWorkerV2

    def worker(window=512, dirty=False, gpu_planned=False):
        runner = types.SimpleNamespace(attn_backend=types.SimpleNamespace(needs_cpu_seq_lens=not gpu_planned))
        me = types.SimpleNamespace(_draft_worker=types.SimpleNamespace(draft_kv_window=window, draft_runner=runner),
                                   spec_graph_max_bs=64,
                                   drafter=types.SimpleNamespace(is_dirty=dirty), presync=None, pending_lengths=None)
        me.round_k = lambda b: 2
        return me

    def batch(lens, decode=True, bonus=True):
        return types.SimpleNamespace(forward_mode=types.SimpleNamespace(is_decode=lambda: decode),
                                     seq_lens_cpu=torch.tensor(lens), reqs=list(lens),
                                     spec_info=types.SimpleNamespace(bonus_tokens=torch.ones(1) if bonus else None))

    me, b = worker(), batch([900, 2000])
    assert SelfSpecWorkerV2.presync_k(me, b) == 2 and me.presync == (b, 2)
    me, b = worker(window=0, gpu_planned=True), batch([30, 2000])  # triton drafts: full context, any length
    assert SelfSpecWorkerV2.presync_k(me, b) == 2 and me.presync == (b, 2)
    for me, b in ((worker(), batch([300, 2000])), (worker(window=0), batch([900, 2000])),
                  (worker(dirty=True), batch([900, 2000])), (worker(), batch([900, 2000], decode=False)),
                  (worker(), batch([900, 2000], bonus=False))):
        assert SelfSpecWorkerV2.presync_k(me, b) == 0 and me.presync is None


def test_the_k0_graphs_get_the_targets_backend_on_a_triton_draft_runner():
    """``target_attention_backend`` hides speculative_draft_attention_backend from SGLang's backend choice for the
    K=0 graphs' backend only: it is restored afterwards, as are the runner's recorded backend names."""
    from er_verl.engine.worker import target_attention_backend

    args = types.SimpleNamespace(speculative_draft_attention_backend="triton")
    runner = types.SimpleNamespace(server_args=args, prefill_attention_backend_str="triton",
                                   decode_attention_backend_str="triton")

    def choose(init_new_workspace):
        assert init_new_workspace
        runner.prefill_attention_backend_str = runner.decode_attention_backend_str = "flashinfer"
        return args.speculative_draft_attention_backend or "flashinfer"

    runner._get_attention_backend = choose
    assert target_attention_backend(runner) == "flashinfer"
    assert args.speculative_draft_attention_backend == "triton"
    assert (runner.prefill_attention_backend_str, runner.decode_attention_backend_str) == ("triton", "triton")
