"""Sync-free, mask-free FlashInfer plans for the target's TARGET_VERIFY CUDA graphs (a chain verify).

Measured on the H200 (``results/diag_2026-11-25b/``, torch.profiler over K=4 rounds, 8B shape, FlashInfer): the
host blocked once per round in ``BatchPrefillWithPagedKVCacheWrapper.plan`` of the verify pass, whose
``qo_indptr.to("cpu")`` waits for every queued draft step; only then did it plan and launch the verify graph,
so the GPU idled between the last draft step and the verify pass. SGLang 0.5.14 swaps in its sync-free
``fast_prefill_plan`` for draft-extend graphs only (flashinfer_backend.py, ``init_forward_metadata_out_graph``).

Our verify is a chain (topk = 1): token i of a request's K+1 attends to its prefix and to tokens 0..i, which is
FlashInfer's causal mask (bottom-right aligned), so no custom mask is needed. For each FlashInfer backend of
the target (the launch state's and every ``build_adaptive_runtime_state`` one), :func:`install`:

- creates the TARGET_VERIFY graph wrappers without a custom-mask buffer (causal; SGLang's forward passes
  ``causal=True``), and
- replaces their ``begin_forward`` by :func:`chain_plan`: the real ``plan`` (host copies; used at capture and
  whenever the host layout is unknown), or, at replay, SGLang's ``fast_prefill_plan`` fed the host layout that
  :func:`install`'s ``init_forward_metadata_out_graph`` wrapper records from the padded replay batch (when the
  verify input says the batch had host lengths):
  q rows K+1 per request, KV lengths ``seq_lens_cpu + K + 1`` (the verify tokens' K/V are written first);
- from bs ``ER_VERL_VERIFY_UNSPLIT_MIN_BS`` (16) up, plans their graphs with the eager one-CTA-per-request
  schedule instead of FlashInfer's graph schedule (:class:`UnsplitPlanModule`).

The pinned host buffer of a wrapper's plan is copied to the device asynchronously; a later plan of the same
wrapper may overwrite it only after that copy ran. Here each verify plan follows the publish wait of the
previous speculative round (SGLang's scheduler resolves the new lengths on the host before the next batch),
which completes after that round's verify pass (with ``sync_free`` the round instead waits for a copy of those
lengths queued behind the same publish, before it plans its verify pass: the same ordering). ``ER_VERL_FAST_VERIFY_PLAN=0`` keeps SGLang's own wrappers.
"""

from __future__ import annotations

import functools
import os

FAST_VERIFY_PLAN_ENV = "ER_VERL_FAST_VERIFY_PLAN"
UNSPLIT_MIN_BS_ENV = "ER_VERL_VERIFY_UNSPLIT_MIN_BS"
INSTALLED_ATTR = "er_verl_chain_verify"
# From bs 16 the unsplit schedule beat FlashInfer's graph schedule at 1k and 3.5k tokens; at bs 8 and 3.5k it lost
# (63 vs 45-56 µs per layer); results/issue4_verify_attention_graph_h200.json.
UNSPLIT_MIN_BS = 16


def enabled(environ=None) -> bool:
    raw = (environ if environ is not None else os.environ).get(FAST_VERIFY_PLAN_ENV, "").strip() or "1"
    if raw not in ("0", "1"):
        raise ValueError(f"{FAST_VERIFY_PLAN_ENV}={raw!r}: expected 1 (sync-free causal verify plans) or 0 (SGLang's)")
    return raw == "1"


def unsplit_min_bs(environ=None) -> int:
    """``ER_VERL_VERIFY_UNSPLIT_MIN_BS``: verify graphs of at least this batch size use the eager, unsplit
    schedule (:class:`UnsplitPlanModule`); 0 keeps FlashInfer's graph schedule at every size."""
    raw = (environ if environ is not None else os.environ).get(UNSPLIT_MIN_BS_ENV, "").strip() or str(UNSPLIT_MIN_BS)
    if not raw.isdigit():
        raise ValueError(f"{UNSPLIT_MIN_BS_ENV}={raw!r}: expected a batch size >= 1, or 0 (never)")
    return int(raw)


class HostLayout:
    """The host-known layout of the verify batch being planned: KV lengths [bs] int32 and q rows per request."""

    def __init__(self):
        self.kv_lens = None
        self.q_len = 0

    def set(self, seq_lens_cpu, q_len: int) -> None:
        import torch

        self.kv_lens = seq_lens_cpu.to(torch.int32) + q_len
        self.q_len = q_len

    def clear(self) -> None:
        self.kv_lens, self.q_len = None, 0

    def plan_kwargs(self) -> dict:
        """The keyword arguments ``fast_prefill_plan`` needs (all on the host)."""
        import torch

        bs = self.kv_lens.shape[0]
        kv_indptr = torch.zeros(bs + 1, dtype=torch.int32)
        kv_indptr[1:] = torch.cumsum(self.kv_lens, 0)
        return dict(qo_indptr_host=torch.arange(0, (bs + 1) * self.q_len, self.q_len, dtype=torch.int32),
                    kv_indptr_host=kv_indptr, kv_lens_host=self.kv_lens, max_q_len=self.q_len,
                    max_kv_len=int(self.kv_lens.max()))


class UnsplitPlanModule:
    """FlashInfer's fa2 batch-prefill module whose planner schedules one CTA per request and KV head, with no
    KV split, as in eager mode, for a verify graph captured at a batch large enough to fill the GPU that way.

    In CUDA-graph mode FlashInfer's planner (``PrefillSplitQOKVIndptr``) must fit any q-length mix, so it sizes
    the query tile by the worst case (one request holding all rows: ``(rows - bs + 1) * gqa`` > 64, so 128 rows
    of q per CTA for a K+1 = 2 chain at bs >= 16) and splits KV then merges. A chain verify has K+1 rows in every
    request, so the eager schedule (tile 16 for K <= 3 with 4-way GQA, one CTA per request and KV head) is the
    same at capture and at every replay of one (bs, K) graph. H200, one 8B layer, bs 32, 3.5k tokens
    (``results/issue4_verify_attention_graph_h200.json``, K=1): graph plan 184 µs, this schedule 117 µs, decode
    113 µs. The override sets the plan's ``enable_cuda_graph`` to False and ``disable_split_kv`` to True; the
    wrapper's buffers stay the graph's. :meth:`install` routes every plan of a wrapper through it (FlashInfer's
    ``plan`` re-assigns ``_cached_module`` each time) by giving the wrapper a ``_cached_module`` property."""

    ARGS = 19  # fa2 plan: ..., page_size, enable_cuda_graph [11], ..., fixed_split [16], disable_split_kv [17], colocated

    def __init__(self, module):
        self._module = module

    def plan(self, *args):
        if len(args) != self.ARGS or not isinstance(args[11], bool) or not isinstance(args[17], bool):
            raise TypeError(f"FlashInfer fa2 prefill plan: {len(args)} arguments, expected {self.ARGS} with "
                            f"enable_cuda_graph at 11 and disable_split_kv at 17 (flashinfer 0.6.12)")
        args = list(args)
        args[11], args[17] = False, True
        return self._module.plan(*args)

    def __getattr__(self, name):
        return getattr(self._module, name)

    @classmethod
    def install(cls, wrapper) -> bool:
        """Route every plan of ``wrapper`` (an fa2 prefill wrapper) through this module; False for another
        backend (nothing changed)."""
        if getattr(wrapper, "_backend", None) != "fa2":
            return False
        module = wrapper.__dict__.pop("_cached_module", None)
        wrapper.__class__ = _unsplit_class(type(wrapper))
        wrapper._cached_module = module
        return True


@functools.cache
def _unsplit_class(base: type) -> type:
    def get(self):
        return self.__dict__.get("_er_verl_module")

    def put(self, module):
        if module is not None and not isinstance(module, UnsplitPlanModule):
            module = UnsplitPlanModule(module)
        self.__dict__["_er_verl_module"] = module

    if isinstance(vars(base).get("_cached_module"), property):
        return base
    return type(f"Unsplit{base.__name__}", (base,), {"_cached_module": property(get, put)})


def chain_plan(wrapper, *args, layout: HostLayout, real_plan, fast_plan, custom_mask=None, **kwargs):
    """``begin_forward`` of a TARGET_VERIFY graph wrapper: never a custom mask (the chain is causal); the fast
    plan when the host layout is known and the wrapper was planned for real once (its kernel module cached)."""
    if layout.kv_lens is None or getattr(wrapper, "_cached_module", None) is None:
        return real_plan(wrapper, *args, **kwargs)
    return fast_plan(wrapper, *args, **kwargs, **layout.plan_kwargs())


def install(backend) -> bool:
    """Make ``backend``'s (a FlashInferAttnBackend of the target) verify graphs causal and their plans
    sync-free; returns False (nothing changed) for a backend this does not fit (sliding window / cross
    attention use two wrappers, or a prefill backend other than fa2)."""
    from flashinfer import BatchPrefillWithPagedKVCacheWrapper
    from sglang.srt.layers.attention import flashinfer_backend as fib

    if getattr(backend, INSTALLED_ATTR, False):
        return True
    if getattr(backend, "num_wrappers", 1) != 1 or getattr(backend, "prefill_backend", None) != "fa2":
        return False
    layout = HostLayout()
    plan = functools.partial(chain_plan, layout=layout, real_plan=BatchPrefillWithPagedKVCacheWrapper.plan,
                             fast_plan=fib.fast_prefill_plan)
    min_bs = unsplit_min_bs()
    prepare, out_graph = backend._prepare_cuda_graph_metadata, backend.init_forward_metadata_out_graph

    def prepare_cuda_graph_metadata(bs, num_tokens, forward_mode, spec_info):
        if not forward_mode.is_target_verify():
            return prepare(bs, num_tokens, forward_mode, spec_info)
        wrappers = backend._create_prefill_wrappers(bs, use_custom_mask=False)
        for w in wrappers:
            if 0 < min_bs <= bs:
                UnsplitPlanModule.install(w)
            w.begin_forward = functools.partial(plan, w)
        backend.prefill_cuda_graph_metadata[bs] = wrappers
        backend.forward_metadata = fib.PrefillMetadata(wrappers, False, False)

    def init_forward_metadata_out_graph(forward_batch, in_capture=False):
        # At replay ``forward_batch`` is SGLang's padded view: its ``seq_lens_cpu`` is the graph's host buffer,
        # refilled only when the batch had host lengths (else stale). The verify input records whether it had
        # (``eagle_prepare_for_verify`` copies ``batch.seq_lens_cpu`` into it).
        spec = forward_batch.spec_info
        known = (forward_batch.forward_mode.is_target_verify() and not in_capture
                 and getattr(spec, "seq_lens_cpu", None) is not None)
        if known:
            layout.set(forward_batch.seq_lens_cpu[:forward_batch.batch_size], spec.draft_token_num)
        try:
            return out_graph(forward_batch, in_capture)
        finally:
            layout.clear()

    backend._prepare_cuda_graph_metadata = prepare_cuda_graph_metadata
    backend.init_forward_metadata_out_graph = init_forward_metadata_out_graph
    setattr(backend, INSTALLED_ATTR, True)
    return True


def attention_backend_around(original, runner, *args, **kwargs):
    """AROUND ``ModelRunner._get_attention_backend``: the target runner's FlashInfer backends get :func:`install`
    when the verify is a chain (topk = 1) and ``ER_VERL_FAST_VERIFY_PLAN`` is not 0."""
    backend = original(runner, *args, **kwargs)
    if runner.is_draft_worker or (getattr(runner.server_args, "speculative_eagle_topk", 1) or 1) != 1 or not enabled():
        return backend
    from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend

    if isinstance(backend, FlashInferAttnBackend) and not install(backend):
        print("er_verl[scheduler]: the target's FlashInfer backend keeps SGLang's verify plans "
              "(two wrappers or a non-fa2 prefill backend)", flush=True)
    elif isinstance(backend, FlashInferAttnBackend) and (min_bs := unsplit_min_bs()):
        print(f"er_verl[scheduler]: verify graphs of bs >= {min_bs} use the unsplit schedule ({UNSPLIT_MIN_BS_ENV})",
              flush=True)
    return backend
