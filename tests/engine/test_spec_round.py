"""CPU tests of the shared-KV round's bookkeeping (spec_round.py) and the forced-acceptance knob (verify.py)."""

import types

import pytest
import torch

from er_verl.engine import spec_round, verify


def test_round_fields_layout_bonus_and_seq_lens():
    out = torch.tensor([[5, 6, 7, -1], [9, -1, -1, -1], [1, 2, 3, 4]])  # K = 3
    emitted = torch.tensor([3, 1, 4])
    fields = spec_round.round_fields(out, emitted, torch.tensor([10, 20, 30]))
    assert fields.next_token_ids.dtype == torch.int32
    assert fields.next_token_ids.tolist() == [5, 6, 7, 0, 9, 0, 0, 0, 1, 2, 3, 4]
    assert fields.accept_lens.tolist() == [3, 1, 4] and fields.accept_lens.dtype == torch.int32
    assert fields.bonus_tokens.tolist() == [7, 9, 4]
    assert fields.new_seq_lens.tolist() == [13, 21, 34]
    stride = 4  # what _resolve_spec_v2_tokens slices with (speculative_num_draft_tokens = K+1)
    ids = fields.next_token_ids.tolist()
    assert [ids[i * stride:i * stride + n] for i, n in enumerate([3, 1, 4])] == [[5, 6, 7], [9], [1, 2, 3, 4]]


def test_round_fields_from_sample_round_all_accept_and_all_reject():
    vocab, k = 8, 2
    logits = torch.full((2, k + 1, vocab), -30.0)
    logits[:, :, 3] = 30.0  # target is (numerically) one-hot on 3
    drafts = torch.tensor([[3, 3], [4, 3]])
    q = torch.nn.functional.one_hot(drafts, vocab).float()
    ones = torch.ones(2)
    out, emitted, _ = verify.sample_round(
        logits, q, drafts, torch.tensor([k, k]), ones, torch.full((2,), -1), ones, torch.zeros(2),
        torch.rand(2, k), torch.Generator().manual_seed(0))
    fields = spec_round.round_fields(out, emitted, torch.tensor([4, 4]))
    assert fields.accept_lens.tolist() == [3, 1]  # all accepted + bonus; first rejected → recovered
    assert fields.bonus_tokens.tolist() == [3, 3]
    assert fields.new_seq_lens.tolist() == [7, 5]


def test_accept_index_is_stock_layout():
    idx = spec_round.accept_index(torch.tensor([2, 3, 1]), 2)
    assert idx.tolist() == [[0, 1, -1], [3, 4, 5], [6, -1, -1]]


@pytest.mark.parametrize("seq_dtype", [torch.int32, torch.int64])
def test_draft_slots_reads_the_positions_after_seq_len(seq_dtype):
    req_to_token = torch.arange(40, dtype=torch.int32).view(4, 10) + 100
    slots = spec_round.draft_slots(req_to_token, torch.tensor([2, 0]), torch.tensor([3, 7], dtype=seq_dtype), 2)
    assert slots.tolist() == [[123, 107], [124, 108]] and slots.dtype == torch.int64  # [K, B]


@pytest.mark.parametrize("seq_dtype", [torch.int32, torch.int64])
def test_k0_slots_and_fields_equal_the_general_ones(seq_dtype):
    """The K=0 step's slot and result fields equal draft_slots(.., 1)[0] and round_fields of one token."""
    req_to_token = torch.arange(40, dtype=torch.int32).view(4, 10) + 100
    pool, seq_lens = torch.tensor([2, 0, 3]), torch.tensor([3, 7, 0], dtype=seq_dtype)
    slot = spec_round.k0_slots(req_to_token, pool, seq_lens)
    expected = spec_round.draft_slots(req_to_token, pool, seq_lens, 1)[0]
    assert torch.equal(slot, expected) and slot.dtype == expected.dtype == torch.int64
    token = torch.tensor([5, 0, 31999])
    lean = spec_round.k0_fields(token, seq_lens)
    full = spec_round.round_fields(token[:, None], torch.ones_like(token), seq_lens)
    for name in ("next_token_ids", "accept_lens", "bonus_tokens", "new_seq_lens"):
        a, b = getattr(lean, name), getattr(full, name)
        assert torch.equal(a, b) and a.dtype == b.dtype, name


def test_forced_k_from_env():
    assert spec_round.forced_k_from_env(3, {}) == 0
    assert spec_round.forced_k_from_env(3, {"ER_VERL_SPEC_K": "3"}) == 3
    for bad in ("4", "-1", "x"):
        with pytest.raises(ValueError, match="ER_VERL_SPEC_K"):
            spec_round.forced_k_from_env(3, {"ER_VERL_SPEC_K": bad})


def test_forced_accept_alpha_is_off_by_default_and_validated():
    assert verify.forced_accept_alpha({}) is None
    assert verify.forced_accept_alpha({"ER_VERL_FORCE_ACCEPT": "0.9"}) == 0.9
    for bad in ("1.5", "nan", "yes"):
        with pytest.raises(ValueError, match="ER_VERL_FORCE_ACCEPT"):
            verify.forced_accept_alpha({"ER_VERL_FORCE_ACCEPT": bad})


@pytest.mark.parametrize("alpha,k", [(0.9, 3), (0.6, 5), (0.0, 2), (1.0, 4)])
def test_forced_round_mean_emitted_is_expected_length(alpha, k):
    gen = torch.Generator().manual_seed(1)
    batch, vocab = 20000, 16
    logits = torch.randn(batch, k + 1, vocab, generator=gen)
    drafts = torch.randint(0, vocab, (batch, k), generator=gen)
    ones = torch.ones(batch)
    out, emitted, accepted = verify.sample_round_forced(
        alpha, logits, drafts, torch.full((batch,), k), ones, torch.full((batch,), -1), ones, torch.zeros(batch),
        torch.rand(batch, k, generator=gen), gen)
    expected = k + 1 if alpha == 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)
    assert emitted.float().mean().item() == pytest.approx(expected, abs=0.05)
    n = accepted[:, None]
    pos = torch.arange(k + 1)[None]
    assert torch.equal(torch.where(pos < n, out, 0), torch.where(pos < n, torch.cat([drafts, drafts[:, :1]], 1), 0))
    assert bool(((out >= 0) == (pos <= n)).all())


def test_forced_warning_is_rate_limited():
    now = [0.0]
    warn = spec_round.ForcedWarning(every_s=5.0, clock=lambda: now[0])
    fired = []
    for t in (0.0, 1.0, 4.9, 5.1, 6.0, 10.2):
        now[0] = t
        fired.append(warn(0.9))
    assert fired == [True, False, False, True, False, True] and warn.rounds == 6


def test_tag_forced_covers_every_emitted_token():
    req = types.SimpleNamespace(customized_info=None, output_ids=[1, 2, 3])
    spec_round.tag_forced([req], 0.8, 2)
    assert req.customized_info[spec_round.FORCED_TAG] == [0.8] * 6
    req.output_ids += [4, 5]
    spec_round.tag_forced([req], 0.8, 2)
    assert len(req.customized_info[spec_round.FORCED_TAG]) == 8


class FakeDrafter:
    """Records each draft step's batch; logits favour token (step + 1) so the chain is predictable."""

    def __init__(self, vocab):
        self.vocab, self.steps = vocab, []
        self.runner = types.SimpleNamespace(
            req_to_token_pool=types.SimpleNamespace(req_to_token=torch.arange(64, dtype=torch.int32).view(2, 32)))

    def forward(self, step):
        self.steps.append(step)
        logits = torch.full((len(step.seq_lens), self.vocab), -1e4)
        logits[:, len(self.steps)] = 0.0
        return types.SimpleNamespace(next_token_logits=logits)


def test_draft_chain_feeds_bonus_then_drafts_at_consecutive_positions(monkeypatch):
    from sglang.srt.model_executor import forward_batch_info as fbi

    monkeypatch.setattr(fbi.ForwardBatch, "init_new", classmethod(
        lambda cls, b, runner: types.SimpleNamespace(**{f: getattr(b, f) for f in (
            "input_ids", "out_cache_loc", "seq_lens", "seq_lens_cpu", "seq_lens_sum", "forward_mode", "spec_info")})))
    drafter = FakeDrafter(vocab=8)
    batch = types.SimpleNamespace(
        seq_lens=torch.tensor([3, 5]), seq_lens_cpu=torch.tensor([3, 5]), seq_lens_sum=8, orig_seq_lens=None,
        req_pool_indices=torch.tensor([1, 0]), spec_info=types.SimpleNamespace(bonus_tokens=torch.tensor([7, 6])),
        forward_mode="TARGET_VERIFY", return_logprob=True, capture_hidden_mode=None)
    ones = torch.ones(2)
    sampling = spec_round.SamplingTensors(ones, torch.ones(2, dtype=torch.int64), ones, torch.zeros(2), False)
    tokens, q = spec_round.draft_chain(drafter, batch, 3, sampling, torch.Generator().manual_seed(0))
    assert tokens.tolist() == [[1, 2, 3], [1, 2, 3]] and q.shape == (2, 3, 8)
    steps = drafter.steps
    assert [s.input_ids.tolist() for s in steps] == [[7, 6], [1, 1], [2, 2]]
    assert [s.out_cache_loc.tolist() for s in steps] == [[35, 5], [36, 6], [37, 7]]  # req_to_token[r, n+i]
    assert [s.seq_lens.tolist() for s in steps] == [[4, 6], [5, 7], [6, 8]]
    assert [s.seq_lens_sum for s in steps] == [10, 12, 14]
    assert all(s.spec_info is None and s.forward_mode.is_decode() for s in steps)
    assert batch.seq_lens.tolist() == [3, 5] and batch.forward_mode == "TARGET_VERIFY"  # caller's batch untouched


def _batch(**over):
    info = types.SimpleNamespace(acc_additive_penalties=None, acc_scaling_penalties=None, logit_bias=None)
    fields = dict(forward_mode=types.SimpleNamespace(is_idle=lambda: False), has_grammar=False, sampling_info=info,
                  spec_info=types.SimpleNamespace(bonus_tokens=torch.tensor([1])))
    fields.update(over)
    return types.SimpleNamespace(**fields)


def _worker(forced_k=3, ready=True, prepared=(0, 1, 2, 3, 4)):
    from er_verl.engine.worker import SelfSpecWorkerV2

    me = types.SimpleNamespace(forced_k=forced_k, speculation_ready=ready, speculative_num_steps_max=4,
                               bad_params_warned=False, feedback=None, prepared_k=list(prepared))
    me._from_params = lambda *a: SelfSpecWorkerV2._from_params(me, *a)
    return me


def _reqs(*params):
    return [types.SimpleNamespace(sampling_params=types.SimpleNamespace(custom_params=p)) for p in params]


def test_round_k_routes_unsupported_batches_to_plain_decoding():
    from er_verl.engine.worker import SelfSpecWorkerV2

    me = _worker()
    assert SelfSpecWorkerV2.round_k(me, _batch()) == 3
    assert SelfSpecWorkerV2.round_k(me, _batch(has_grammar=True)) == 0
    assert SelfSpecWorkerV2.round_k(me, _batch(spec_info=None)) == 0
    penalised = _batch()
    penalised.sampling_info.logit_bias = torch.zeros(1, 8)
    assert SelfSpecWorkerV2.round_k(me, penalised) == 0
    assert SelfSpecWorkerV2.round_k(_worker(ready=False), _batch()) == 0
    assert SelfSpecWorkerV2.round_k(_worker(forced_k=0), _batch()) == 0
    assert SelfSpecWorkerV2.round_k(_worker(prepared=(0, 1, 4)), _batch()) == 1  # K=2, 3 failed to capture


def test_round_k_takes_the_smallest_requested_k_and_ignores_bad_values_with_one_warning(capsys):
    from er_verl.engine.worker import SelfSpecWorkerV2

    me = _worker(forced_k=0)
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs({"er_k": 4}, {"er_k": 2}, None))) == 0  # None: default
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs({"er_k": 4}, {"er_k": 2}))) == 2
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs({"er_k": 9}))) == 0
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs({"er_k": "3"}))) == 0
    assert capsys.readouterr().out.count("WARNING") == 1


def test_the_controller_never_speculates_past_the_round_graphs_but_an_explicit_k_is_honoured():
    from er_verl.engine.worker import SelfSpecWorkerV2, spec_graph_max_bs

    graphs = lambda bs: types.SimpleNamespace(max_bs=bs)  # noqa: E731
    assert spec_graph_max_bs(graphs(128), graphs(256)) == 128 and spec_graph_max_bs(None, graphs(64)) == 0
    asked = []
    controller = types.SimpleNamespace(choose=lambda groups: asked.append(len(groups)) or 3)
    me = _worker(forced_k=0)
    me.feedback, me.spec_graph_max_bs = types.SimpleNamespace(controller=controller), 2
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs(None, None))) == 3
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs(None, None, None))) == 0
    assert asked == [2]  # the controller is not asked (its gate state untouched) past the graphs
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs({"er_k": 2}, {"er_k": 2}, {"er_k": 2}))) == 2


def test_request_k_and_batch_alpha_validate_with_a_sentence():
    assert spec_round.request_k({"er_k": 3}, 4) == 3 and spec_round.request_k({}, 4) is None
    for bad in (5, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="er_k.*0 to Kmax=4"):
            spec_round.request_k({"er_k": bad}, 4)
    assert spec_round.batch_alpha([{"er_force_alpha": 0.6}], None) is None  # no launch opt-in: exact
    assert spec_round.batch_alpha([None, {}], 0.9) == 0.9
    assert spec_round.batch_alpha([{"er_force_alpha": 0.6}, {}], 0.9) == [[0.6], [0.9]]
    with pytest.raises(ValueError, match="probability"):
        spec_round.batch_alpha([{"er_force_alpha": 1.5}], 0.9)


def test_forced_sampler_takes_a_per_request_alpha():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 16)
    drafts = torch.randint(0, 16, (2, 3))
    s = spec_round.SamplingTensors(torch.ones(2), torch.full((2,), -1), torch.ones(2), torch.zeros(2), False)
    _, emitted = spec_round.sample(logits, drafts, None, s, gen, [[0.0], [1.0]])
    assert emitted.tolist() == [1, 4]  # α=0 rejects the first draft, α=1 accepts all three


def test_mixin_routes_decode_by_round_k_and_counts_both_kinds():
    from er_verl.engine.self_spec import DecodeStats, SelfSpecMixin

    class Stock:
        def forward_batch_generation(self, batch, on_publish=None):
            return types.SimpleNamespace(kind="plain", can_run_cuda_graph=True)

    class Worker(SelfSpecMixin, Stock):
        def __init__(self, k):
            self.k, self.used, self.decode_stats = k, [], DecodeStats()
            drafter = types.SimpleNamespace(ready=True, is_dirty=False, refresh=lambda model: True)
            self._draft_worker = types.SimpleNamespace(drafter=drafter)
            self.target_worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=None))

        def round_k(self, batch):
            return self.k

        def use_k(self, k):
            self.used.append(k)

        def speculative_round(self, batch, k, on_publish=None):
            return types.SimpleNamespace(kind=f"spec{k}", can_run_cuda_graph=False)

    mode = types.SimpleNamespace(is_extend=lambda: False)
    decode = types.SimpleNamespace(forward_mode=mode, is_extend_in_batch=False)
    assert Worker(0).forward_batch_generation(decode).kind == "plain"
    worker = Worker(3)
    assert worker.forward_batch_generation(decode).kind == "spec3" and worker.used == [3]
    assert (worker.decode_stats.decode_steps, worker.decode_stats.graph_steps) == (1, 0)


def test_round_k_asks_the_controller_with_group_keys_unless_a_request_sets_er_k():
    from er_verl.engine.worker import SelfSpecWorkerV2

    asked = []

    class Controller:
        def choose(self, groups):
            asked.append(groups)
            return 9  # more than Kmax: clamped

    me = _worker(forced_k=0)
    me.feedback, me.spec_graph_max_bs = types.SimpleNamespace(controller=Controller()), 64
    reqs = _reqs({"er_group": "u1"}, {"er_group": "u1"}, None)
    for r, rid in zip(reqs, ("r0", "r1", "r2")):
        r.rid = rid
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=reqs)) == 4
    assert asked == [["u1", "u1", "r2"]]
    assert SelfSpecWorkerV2.round_k(me, _batch(reqs=_reqs({"er_k": 2}, {"er_group": "u1"}))) == 0  # default 0
    assert len(asked) == 1


def test_a_round_that_raises_falls_back_to_a_plain_step_with_the_batch_restored(capsys):
    from er_verl.engine.self_spec import DecodeStats, SelfSpecMixin

    class Stock:
        def forward_batch_generation(self, batch, on_publish=None):
            seen.append((batch.spec_info, batch.input_ids))
            return types.SimpleNamespace(kind="plain", can_run_cuda_graph=True)

    class Worker(SelfSpecMixin, Stock):
        def __init__(self):
            self.used, self.decode_stats = [], DecodeStats()
            drafter = types.SimpleNamespace(ready=True, is_dirty=False, refresh=lambda model: True)
            self._draft_worker = types.SimpleNamespace(drafter=drafter)
            self.target_worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=None))

        def round_k(self, batch):
            return 3 if self.speculation_ready else 0

        def use_k(self, k):
            self.used.append(k)

        def speculative_round(self, batch, k, on_publish=None):
            batch.spec_info, batch.input_ids = "verify-input", "draft-tokens"  # rebound, then a fault
            raise RuntimeError("drafter exploded")

    seen = []
    mode = types.SimpleNamespace(is_extend=lambda: False)
    batch = types.SimpleNamespace(forward_mode=mode, is_extend_in_batch=False, spec_info="draft-input",
                                  input_ids="bonus")
    worker = Worker()
    assert worker.forward_batch_generation(batch).kind == "plain"
    assert seen == [("draft-input", "bonus")] and worker.used == [3, 0]
    assert worker.round_failures == 1 and not worker.speculation_ready
    assert "speculative round failed: RuntimeError('drafter exploded')" in capsys.readouterr().out
    assert worker.forward_batch_generation(batch).kind == "plain" and worker.used == [3, 0, 0]  # stays off


def test_draft_steps_of_a_gpu_only_batch_stay_sync_free(monkeypatch):
    """Without a CPU mirror of seq_lens (backends that do not need one), no step computes a sum on the host."""
    from sglang.srt.model_executor import forward_batch_info as fbi

    monkeypatch.setattr(fbi.ForwardBatch, "init_new", classmethod(
        lambda cls, b, runner: types.SimpleNamespace(seq_lens=b.seq_lens, seq_lens_sum=b.seq_lens_sum)))
    drafter = FakeDrafter(vocab=8)
    batch = types.SimpleNamespace(
        seq_lens=torch.tensor([3, 5]), seq_lens_cpu=None, seq_lens_sum=None, orig_seq_lens=None,
        req_pool_indices=torch.tensor([1, 0]), spec_info=types.SimpleNamespace(bonus_tokens=torch.tensor([7, 6])),
        forward_mode="TARGET_VERIFY", return_logprob=False, capture_hidden_mode=None)
    ones = torch.ones(2)
    sampling = spec_round.SamplingTensors(ones, torch.ones(2, dtype=torch.int64), ones, torch.zeros(2), False)
    marks = []
    spec_round.draft_chain(drafter, batch, 2, sampling, torch.Generator().manual_seed(0),
                           on_launch=lambda: marks.append(("launched", len(drafter.steps))),
                           on_start=lambda: marks.append(("start", len(drafter.steps))))
    assert [s.seq_lens_sum for s in drafter.steps] == [None, None]
    assert marks == [("start", 0), ("launched", 1)]  # the controller's mark precedes the first draft forward


def test_plain_k0_is_on_by_default_and_checked():
    from er_verl.engine.spec_round import plain_k0_enabled

    assert plain_k0_enabled({}) is True and plain_k0_enabled({"ER_VERL_PLAIN_K0": "0"}) is False
    with pytest.raises(ValueError, match="ER_VERL_PLAIN_K0"):
        plain_k0_enabled({"ER_VERL_PLAIN_K0": "yes"})


def test_gumbel_k0_sampler_is_opt_in_and_checked():
    from er_verl.engine.spec_round import gumbel_k0_enabled

    assert gumbel_k0_enabled({}) is False and gumbel_k0_enabled({"ER_VERL_K0_SAMPLER": "torch"}) is False
    assert gumbel_k0_enabled({"ER_VERL_K0_SAMPLER": "gumbel"}) is True
    with pytest.raises(ValueError, match="ER_VERL_K0_SAMPLER='triton'"):
        gumbel_k0_enabled({"ER_VERL_K0_SAMPLER": "triton"})


def test_plain_graph_max_bs_extends_the_k0_graph_list_only_while_capturing():
    from types import SimpleNamespace

    from er_verl.engine.spec_round import decode_graph_bs, plain_graph_max_bs

    assert plain_graph_max_bs({}) is None and plain_graph_max_bs({"ER_VERL_PLAIN_GRAPH_MAX_BS": "256"}) == 256
    for bad in ("0", "-4", "big"):
        with pytest.raises(ValueError, match="ER_VERL_PLAIN_GRAPH_MAX_BS"):
            plain_graph_max_bs({"ER_VERL_PLAIN_GRAPH_MAX_BS": bad})
    decode = SimpleNamespace(bs=[1, 2, 4, 8, 128], max_bs=128)
    sa = SimpleNamespace(cuda_graph_config=SimpleNamespace(decode=decode),
                         _generate_decode_cuda_graph_batch_sizes=lambda m: [1, 8, 64, m])
    with decode_graph_bs(sa, 256):
        assert decode.bs == [1, 8, 64, 256] and decode.max_bs == 256
    assert decode.bs == [1, 2, 4, 8, 128] and decode.max_bs == 128  # restored
    for smaller in (None, 64):
        with decode_graph_bs(sa, smaller):
            assert decode.bs == [1, 2, 4, 8, 128]  # never shrunk
    with pytest.raises(RuntimeError):
        with decode_graph_bs(sa, 512):
            raise RuntimeError("capture failed")
    assert decode.max_bs == 128  # restored after a failed capture too


def test_every_request_of_a_batch_carries_the_tag_keys_sglang_streams():
    """SGLang's streamer appends customized_info[key] only for requests having the key; its tokenizer manager
    then reads v[i] for every request i of the batch. One tagged request beside an untagged one crashed a
    verl rollout on the H200; after ensure_tags every key's list has one entry per request."""
    from types import SimpleNamespace

    from er_verl.engine.spec_round import DRAFTED_TAG, REQUANT_TAG, TAG_KEYS, ensure_tags, tag_requant, tag_round_counts

    def stream(reqs):  # output_streamer: per key, one slice per request that has the key
        out = {}
        for req in reqs:
            for key, v in (req.customized_info or {}).items():
                out.setdefault(key, []).append(v[0:len(req.output_ids)])
        return out

    def req(n, info=None):
        return SimpleNamespace(output_ids=[1] * n, customized_info=info)

    reqs = [req(5), req(3), req(7, {"other": [0] * 7})]
    tag_round_counts(reqs[:1], k=2)  # only the first speculated (the others finished or were K=0)
    tag_requant(reqs[1:2], 40.0)  # only the second was in the first decode batch after a requant
    for key in (DRAFTED_TAG, REQUANT_TAG):
        with pytest.raises(IndexError):
            [stream(reqs)[key][i] for i in range(len(reqs))]  # what the tokenizer manager does
    ensure_tags(reqs)
    out = stream(reqs)
    assert len(TAG_KEYS) == 4 and all(len(out[key]) == len(reqs) for key in TAG_KEYS)
    assert out[DRAFTED_TAG][1] == [] and reqs[0].er_verl_drafted == 2
    assert reqs[2].customized_info["other"] == [0] * 7  # other keys untouched
    before = dict(reqs[0].customized_info)
    ensure_tags(reqs)  # idempotent: existing tags kept
    assert reqs[0].customized_info == before


def test_the_spec_worker_starts_its_controller_from_the_servers_config(monkeypatch, capsys):
    """``_controller_feedback`` as the spec worker's __init__ calls it (the 40e5b15 review moved the config
    parsing into a helper that only the draft worker had; the engine then failed to start on the H200)."""
    from er_verl.config import EfficientConfig, config_to_json
    from er_verl.engine.worker import CONTROL_ENV, SelfSpecWorkerV2, control_config

    model = torch.nn.Linear(4, 4)
    me = types.SimpleNamespace(forced_k=0, target_worker=types.SimpleNamespace(
        model_runner=types.SimpleNamespace(model=model)))
    monkeypatch.delenv(CONTROL_ENV, raising=False)
    assert control_config() is None and SelfSpecWorkerV2._controller_feedback(me) is None
    monkeypatch.setenv(CONTROL_ENV, config_to_json(EfficientConfig(max_draft_len=3, draft_kv_window=512)))
    assert control_config().draft_kv_window == 512
    feedback = SelfSpecWorkerV2._controller_feedback(me)
    assert feedback is not None and "controller on" in capsys.readouterr().out
    me.forced_k = 2  # ER_VERL_SPEC_K forces K: no controller
    assert SelfSpecWorkerV2._controller_feedback(me) is None


def test_host_to_device_keeps_values_and_shape():
    out = spec_round.host_to_device([[0.5], [0.9]], "cpu")
    assert out.dtype == torch.float32 and out.shape == (2, 1) and out.flatten().tolist() == [0.5, 0.8999999761581421]
