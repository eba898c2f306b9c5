"""The chain-verify FlashInfer plan hook without a GPU: which plan runs, the host layout it is given, and what
install() changes on a backend (fakes standing in for SGLang's FlashInferAttnBackend and its wrappers)."""

import pytest
import torch

from er_verl.engine import verify_plan


def _calls():
    seen = []
    real = lambda w, *a, **kw: seen.append(("real", a, kw))  # noqa: E731
    fast = lambda w, *a, **kw: seen.append(("fast", a, kw))  # noqa: E731
    return seen, real, fast


class Wrapper:
    _cached_module = None


def test_real_plan_without_the_mask_until_the_layout_is_known_and_the_module_cached():
    seen, real, fast = _calls()
    layout, w = verify_plan.HostLayout(), Wrapper()
    verify_plan.chain_plan(w, "qo", "kv", layout=layout, real_plan=real, fast_plan=fast, custom_mask="mask", non_blocking=True)
    assert seen == [("real", ("qo", "kv"), {"non_blocking": True})]  # capture: the mask is dropped (causal chain)
    layout.set(torch.tensor([10, 3]), 5)
    verify_plan.chain_plan(w, "qo", layout=layout, real_plan=real, fast_plan=fast)
    assert seen[-1][0] == "real"  # no kernel module cached yet: a real plan first
    w._cached_module = object()
    verify_plan.chain_plan(w, "qo", layout=layout, real_plan=real, fast_plan=fast, custom_mask="mask")
    kind, args, kw = seen[-1]
    assert kind == "fast" and args == ("qo",) and "custom_mask" not in kw
    # KV lengths include the K+1 verify tokens; q rows are K+1 per request
    assert kw["kv_lens_host"].tolist() == [15, 8] and kw["kv_indptr_host"].tolist() == [0, 15, 23]
    assert kw["qo_indptr_host"].tolist() == [0, 5, 10] and kw["max_q_len"] == 5 and kw["max_kv_len"] == 15
    assert kw["kv_lens_host"].dtype == torch.int32 and kw["kv_indptr_host"].dtype == torch.int32
    layout.clear()
    verify_plan.chain_plan(w, "qo", layout=layout, real_plan=real, fast_plan=fast)
    assert seen[-1][0] == "real"


class Mode:
    def __init__(self, verify):
        self.verify = verify

    def is_target_verify(self):
        return self.verify


class Backend:
    num_wrappers, prefill_backend = 1, "fa2"

    def __init__(self):
        self.prefill_cuda_graph_metadata, self.log = {}, []

    def _prepare_cuda_graph_metadata(self, bs, num_tokens, forward_mode, spec_info):
        self.log.append(("stock prepare", bs))

    def _create_prefill_wrappers(self, bs, use_custom_mask=False):
        self.log.append(("create", bs, use_custom_mask))
        return [Wrapper()]

    def init_forward_metadata_out_graph(self, forward_batch, in_capture=False):
        w = self.prefill_cuda_graph_metadata.get(forward_batch.batch_size, [None])[0]
        if w is not None:
            w.begin_forward("qo", custom_mask="mask")


class Batch:
    """SGLang's padded replay view: ``seq_lens_cpu`` is the graph's host buffer (always a tensor, stale when the
    batch had no host lengths); the verify input's ``seq_lens_cpu`` says whether it had them."""

    def __init__(self, verify, bs, buffer, had_host_lens=True, k1=4):
        self.forward_mode, self.batch_size, self.seq_lens_cpu = Mode(verify), bs, buffer
        self.spec_info = type("Spec", (), {"draft_token_num": k1, "seq_lens_cpu": buffer if had_host_lens else None})()


def test_install_makes_verify_wrappers_maskless_and_plans_replays_fast(monkeypatch):
    pytest.importorskip("sglang.srt.layers.attention.flashinfer_backend")
    from flashinfer import BatchPrefillWithPagedKVCacheWrapper
    from sglang.srt.layers.attention import flashinfer_backend as fib

    seen, real, fast = _calls()
    monkeypatch.setattr(BatchPrefillWithPagedKVCacheWrapper, "plan", real)
    monkeypatch.setattr(fib, "fast_prefill_plan", fast)
    b = Backend()
    assert verify_plan.install(b) and verify_plan.install(b)  # idempotent
    b._prepare_cuda_graph_metadata(8, 8, Mode(False), None)
    assert b.log == [("stock prepare", 8)]  # decode graphs: SGLang's own
    b._prepare_cuda_graph_metadata(2, 8, Mode(True), None)
    assert b.log[-1] == ("create", 2, False)  # verify graphs: no custom-mask buffer
    b.init_forward_metadata_out_graph(Batch(True, 2, torch.tensor([7, 9, 1])), in_capture=True)
    assert seen[-1][0] == "real"  # capture plans for real
    b.prefill_cuda_graph_metadata[2][0]._cached_module = object()
    b.init_forward_metadata_out_graph(Batch(True, 2, torch.tensor([7, 9, 1])))
    kind, _, kw = seen[-1]
    assert kind == "fast" and kw["kv_lens_host"].tolist() == [11, 13]  # the padded batch's first bs rows
    seen.clear()
    b.init_forward_metadata_out_graph(Batch(True, 2, torch.tensor([7, 9, 1]), had_host_lens=False))
    assert seen[-1][0] == "real"  # the buffer is stale without host lengths: the real (syncing) plan, still correct


def test_install_refuses_two_wrapper_or_non_fa2_backends():
    pytest.importorskip("sglang.srt.layers.attention.flashinfer_backend")
    b = Backend()
    b.num_wrappers = 2
    assert not verify_plan.install(b)
    b = Backend()
    b.prefill_backend = "fa3"
    assert not verify_plan.install(b)


def test_env_switch():
    assert verify_plan.enabled({}) and not verify_plan.enabled({verify_plan.FAST_VERIFY_PLAN_ENV: "0"})
    with pytest.raises(ValueError, match="ER_VERL_FAST_VERIFY_PLAN='yes': expected 1"):
        verify_plan.enabled({verify_plan.FAST_VERIFY_PLAN_ENV: "yes"})


class Module:
    """FlashInfer's fa2 prefill module as the planner sees it: records the plan arguments it was given."""

    def __init__(self):
        self.plans = []

    def plan(self, *args):
        self.plans.append(args)
        return tuple(args)

    def paged_run(self):
        return "run"


def _plan_args(enable_cuda_graph=True, disable_split_kv=False):
    # float ws, int ws, pinned ws, qo, kv indptr, kv lens, rows, bs, qo heads, kv heads, page, graph,
    # head dims, causal, window, fixed split, disable split, colocated CTAs (flashinfer 0.6.12)
    return ["f", "i", "p", "qo", "kv", "lens", 64, 32, 32, 8, 1, enable_cuda_graph, 128, 128, True, -1, -1,
            disable_split_kv, 0]


class FlashInferLikeWrapper:
    """Re-assigns ``_cached_module`` at every plan, as FlashInfer's ``plan`` does."""

    def __init__(self, module, backend="fa2"):
        self._cached_module, self._backend, self.module = None, backend, module

    def plan(self):
        self._cached_module = self.module
        return self._cached_module.plan(*_plan_args())


def test_unsplit_module_plans_the_eager_unsplit_schedule_on_every_plan():
    module = Module()
    w = FlashInferLikeWrapper(module)
    assert verify_plan.UnsplitPlanModule.install(w)
    assert isinstance(w, FlashInferLikeWrapper) and type(w) is not FlashInferLikeWrapper
    for _ in range(3):  # capture, then replays: FlashInfer re-assigns the module each time; the override stays
        args = w.plan()
        assert args[11] is False and args[17] is True  # enable_cuda_graph off, KV split off
        assert args[:11] == tuple(_plan_args()[:11]) and args[18] == 0  # everything else as given
    assert isinstance(w._cached_module, verify_plan.UnsplitPlanModule) and w._cached_module.paged_run() == "run"
    other = FlashInferLikeWrapper(Module())
    assert other.plan()[11] is True  # an un-installed wrapper keeps FlashInfer's graph plan
    fa3 = FlashInferLikeWrapper(Module(), backend="fa3")
    assert not verify_plan.UnsplitPlanModule.install(fa3) and type(fa3) is FlashInferLikeWrapper


def test_unsplit_module_refuses_a_plan_signature_it_does_not_know():
    module = verify_plan.UnsplitPlanModule(Module())
    with pytest.raises(TypeError, match="18 arguments, expected 19"):
        module.plan(*_plan_args()[:-1])
    args = _plan_args()
    args[11] = 1  # not a bool where enable_cuda_graph should be
    with pytest.raises(TypeError, match="enable_cuda_graph at 11"):
        module.plan(*args)


def test_install_uses_the_unsplit_schedule_from_the_threshold_batch_size(monkeypatch):
    pytest.importorskip("sglang.srt.layers.attention.flashinfer_backend")
    from flashinfer import BatchPrefillWithPagedKVCacheWrapper
    from sglang.srt.layers.attention import flashinfer_backend as fib

    seen, real, fast = _calls()
    monkeypatch.setattr(BatchPrefillWithPagedKVCacheWrapper, "plan", real)
    monkeypatch.setattr(fib, "fast_prefill_plan", fast)
    monkeypatch.setenv(verify_plan.UNSPLIT_MIN_BS_ENV, "4")

    class FaWrapper(Wrapper):
        _backend = "fa2"

    b = Backend()
    b._create_prefill_wrappers = lambda bs, use_custom_mask=False: [FaWrapper()]
    assert verify_plan.install(b)
    for bs in (2, 3, 4, 8):
        b._prepare_cuda_graph_metadata(bs, bs * 4, Mode(True), None)
    unsplit = {bs: isinstance(vars(type(ws[0])).get("_cached_module"), property)
               for bs, ws in b.prefill_cuda_graph_metadata.items()}
    assert unsplit == {2: False, 3: False, 4: True, 8: True}


def test_unsplit_threshold_env():
    assert verify_plan.unsplit_min_bs({}) == verify_plan.UNSPLIT_MIN_BS == 16
    assert verify_plan.unsplit_min_bs({verify_plan.UNSPLIT_MIN_BS_ENV: "0"}) == 0
    with pytest.raises(ValueError, match="ER_VERL_VERIFY_UNSPLIT_MIN_BS='-1': expected a batch size"):
        verify_plan.unsplit_min_bs({verify_plan.UNSPLIT_MIN_BS_ENV: "-1"})
