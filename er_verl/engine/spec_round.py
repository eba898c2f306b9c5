"""One shared-KV self-speculative round for a decode batch with one draft length K (1..Kmax).

Notation as in ``verify.py``: p target, q draft, K draft length, B batch. SGLang's spec-v2 convention:
``batch.seq_lens[b]`` = n_b tokens whose target K/V is committed; ``batch.spec_info.bonus_tokens[b]``
is the last verified token x̂ (position n_b, not yet in the cache); ``req_to_token[r, n_b .. n_b+Kmax]``
are slots the scheduler already allocated for this round (``alloc_len_per_decode`` = Kmax+1).

1. Draft (:func:`draft_chain`): K DECODE forwards of the drafter on the draft ModelRunner (its attention
   backend is the FlashInfer backend SGLang built for it; its KV pool is the target's). Step i feeds
   x̂ (i = 0) or d_{i-1} at position n+i with ``seq_lens = n+i+1`` and writes the drafter's K/V into
   slot ``req_to_token[r, n+i]``; d_i ~ q_i by ``verify.draft_sample``. Those K slots are scratch: the
   verify pass writes the target's K/V for positions n..n+K into the same slots before anything reads
   them again, and nothing below n is touched. No draft prefill, no draft extend.
2. Verify (:func:`target_verify`): a chain ``EagleVerifyInput`` (SGLang's own ``build_tree_kernel_efficient``
   with topk=1 parents, as ``EagleDraftWorker.draft`` does) through ``eagle_prepare_for_verify`` and the
   target's TARGET_VERIFY forward (its CUDA graph for K+1 tokens when the runtime state for K is active).
3. Sample (:func:`sample`): ``verify.sample_round`` (exact) or, with ``ER_VERL_FORCE_ACCEPT`` set,
   ``verify.sample_round_forced`` (systems measurements only); :func:`round_fields` turns its outputs
   into the ``GenerationBatchResult`` fields ``_resolve_spec_v2_tokens`` reads.

Not handled here (the worker routes such batches to K=0): grammars, penalties / logit bias, idle
batches. Per-request sampling seeds are not honoured (one generator per worker). Each draft step replays the
draft runner's DECODE CUDA graph for its batch size (``worker.SelfDraftWorker.capture_decode_graphs``;
sampling between steps is eager); the verify pass replays SGLang's TARGET_VERIFY graph for K+1 tokens. TP > 1: every rank
samples with an identically seeded generator from its (all-gathered) logits; unlike stock ``eagle_sample``
nothing is broadcast from rank 0 (unverified). Memory: q is kept as [B, K, V] fp32 (large at big B·V).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections import deque
from dataclasses import dataclass

import torch

from er_verl.engine import verify

SPEC_K_ENV = "ER_VERL_SPEC_K"  # forced draft length for every decode batch (0 = plain decoding)
WARN_EVERY_S = 5.0
FORCED_TAG = "er_verl_forced_accept"
# Per-token customized_info tags (streamed into meta_info): this request's drafted tokens and speculative rounds
# so far. SGLang's own spec_num_proposed_drafts is verify passes x Kmax, K=0 steps included; these are exact.
DRAFTED_TAG = "er_verl_drafted"
ROUNDS_TAG = "er_verl_spec_rounds"
# Running rounds per draft length: a list whose entry K-1 counts this request's rounds of K drafts.
K_ROUNDS_TAG = "er_verl_k_rounds"
# The drafter's last requant time (ms), tagged on the requests of the first decode batch after it ran.
REQUANT_TAG = "er_verl_requant_ms"
TAG_KEYS = (DRAFTED_TAG, ROUNDS_TAG, K_ROUNDS_TAG, REQUANT_TAG)


@dataclass
class RoundFields:
    """What SGLang's scheduler reads from a spec-v2 result (``_resolve_spec_v2_tokens``)."""

    next_token_ids: torch.Tensor  # [B*(K+1)] int32: row b's emitted tokens at b*(K+1) .. +accept_lens[b]
    accept_lens: torch.Tensor     # [B] int32: tokens emitted = accepted drafts + 1 (recovered or bonus)
    bonus_tokens: torch.Tensor    # [B] int32: the last emitted token, the next round's root
    new_seq_lens: torch.Tensor    # [B]: seq_lens + accept_lens


def round_fields(output_tokens: torch.Tensor,  # [B, K+1] int64, −1-padded (sample_round)
                 num_emitted: torch.Tensor,    # [B] int64 in 1..K+1
                 seq_lens: torch.Tensor        # [B] committed lengths before this round
                 ) -> RoundFields:
    """Pure: sample_round's outputs in SGLang's layout (stride K+1, padding 0 like eagle_sample)."""
    last = output_tokens.gather(1, (num_emitted - 1)[:, None]).squeeze(1)
    accept_lens = num_emitted.to(torch.int32)
    return RoundFields(
        next_token_ids=output_tokens.clamp_min(0).to(torch.int32).reshape(-1),
        accept_lens=accept_lens,
        bonus_tokens=last.to(torch.int32),
        new_seq_lens=seq_lens + accept_lens.to(seq_lens.dtype),
    )


def k0_fields(token: torch.Tensor,     # [B] int64: the one token each request emits
              seq_lens: torch.Tensor   # [B] committed lengths before the step
              ) -> RoundFields:
    """Pure: ``round_fields(token[:, None], ones, seq_lens)`` for K=0, built with four ops instead of ~13.
    next_token_ids and bonus_tokens stay two tensors, as round_fields makes them (SGLang keeps both)."""
    return RoundFields(next_token_ids=token.to(torch.int32), accept_lens=torch.ones_like(token, dtype=torch.int32),
                       bonus_tokens=token.to(torch.int32), new_seq_lens=seq_lens + 1)


def k0_slots(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """[B] int64: the slot of position n_b, ``req_to_token[r_b, n_b]`` (``draft_slots(..., 1)[0]``) by one index op."""
    return req_to_token[req_pool_indices, seq_lens].to(torch.int64)


def accept_index(num_emitted: torch.Tensor, k: int) -> torch.Tensor:
    """[B, K+1] int32: flat verify-row index b*(K+1)+i of emitted token i, −1 after (SGLang's layout)."""
    batch = num_emitted.shape[0]
    pos = torch.arange(k + 1, device=num_emitted.device)[None]
    flat = torch.arange(batch, device=num_emitted.device)[:, None] * (k + 1) + pos
    return torch.where(pos < num_emitted[:, None], flat, -1).to(torch.int32)


def draft_slots(req_to_token: torch.Tensor,      # [R, max_context] int32 slot table
                req_pool_indices: torch.Tensor,  # [B]
                seq_lens: torch.Tensor,          # [B]
                k: int) -> torch.Tensor:
    """[K, B] int64: the slot of position n_b + i for draft step i (``req_to_token[r_b, n_b + i]``)."""
    cols = seq_lens[None] + torch.arange(k, device=seq_lens.device, dtype=seq_lens.dtype)[:, None]   # [K, B]
    return req_to_token[req_pool_indices[None], cols].to(torch.int64)


def forced_k_from_env(kmax: int, environ=None) -> int:
    """K from ``ER_VERL_SPEC_K`` (default 0: plain decoding); ValueError outside 0..Kmax."""
    raw = (environ if environ is not None else os.environ).get(SPEC_K_ENV, "").strip() or "0"
    if not raw.isdigit() or int(raw) > kmax:
        raise ValueError(f"{SPEC_K_ENV}={raw!r}: expected an integer draft length from 0 to Kmax={kmax}")
    return int(raw)


K_PARAM = "er_k"                    # custom_params key: this request's draft length (0..Kmax)
ALPHA_PARAM = "er_force_alpha"      # custom_params key: forced α, honoured only with ER_VERL_FORCE_ACCEPT set


def request_k(custom_params, kmax: int):
    """This request's K from ``custom_params[K_PARAM]``: None when absent; ValueError outside 0..Kmax."""
    raw = (custom_params or {}).get(K_PARAM)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= kmax:
        raise ValueError(f"custom_params[{K_PARAM!r}]={raw!r}: expected an integer draft length from 0 to Kmax={kmax}")
    return raw


def batch_k(params: list, default_k: int, kmax: int) -> int:
    """One K for the whole batch: the smallest any request asks for (requests without ``er_k`` ask for
    ``default_k``), so no request drafts further than it wanted. Per-request K inside one round comes
    with the controller."""
    ks = [request_k(p, kmax) for p in params]
    return min((default_k if k is None else k) for k in ks) if ks else default_k


def batch_alpha(params: list, default_alpha):
    """Forced α for this batch: None (exact sampling) unless the launch opted in (``default_alpha`` set);
    then a float, or a [B, 1]-shaped list when requests override it with ``er_force_alpha``."""
    if default_alpha is None:
        return None
    alphas = []
    for p in params:
        raw = (p or {}).get(ALPHA_PARAM, default_alpha)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0.0 <= raw <= 1.0:
            raise ValueError(f"custom_params[{ALPHA_PARAM!r}]={raw!r}: expected a probability in [0, 1]")
        alphas.append(float(raw))
    if all(a == alphas[0] for a in alphas):
        return alphas[0] if alphas else default_alpha
    return [[a] for a in alphas]


@dataclass
class SamplingTensors:
    temperature: torch.Tensor  # [B]
    top_k: torch.Tensor        # [B] int
    top_p: torch.Tensor        # [B]
    min_p: torch.Tensor        # [B]
    need_filter: bool

    @classmethod
    def of(cls, info) -> "SamplingTensors":
        """From SGLang's SamplingBatchInfo (temperatures is [B, 1])."""
        need = bool(info.need_top_k_sampling or info.need_top_p_sampling or info.need_min_p_sampling)
        return cls(info.temperatures.view(-1), info.top_ks, info.top_ps, info.min_ps, need)


def draft_chain(drafter, batch, k: int, sampling: SamplingTensors, gen: torch.Generator, on_launch=None,
                on_start=None):
    """K drafter DECODE steps on the shared KV: (tokens [B, K] int64, q [B, K, V] fp32). See module doc.
    ``on_start()`` / ``on_launch()`` (optional) are called just before / once the first step's forward is
    launched (the controller's and the profiler's marks)."""
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch

    runner = drafter.runner
    slots = draft_slots(runner.req_to_token_pool.req_to_token, batch.req_pool_indices, batch.seq_lens, k)
    step = decode_step_batch(batch)
    token = batch.spec_info.bonus_tokens.to(torch.int64)
    tokens, probs = [], []
    for i in range(k):
        _set_decode_step(step, batch, token, slots[i], i + 1)
        step.capture_hidden_mode = CaptureHiddenMode.NULL
        forward_batch = ForwardBatch.init_new(step, runner)
        if i == 0 and on_start is not None:
            on_start()
        logits = drafter.forward(forward_batch).next_token_logits  # [B, V]
        if i == 0 and on_launch is not None:
            on_launch()
        token, q = verify.draft_sample(logits, sampling.temperature, sampling.top_k, sampling.top_p,
                                       sampling.min_p, gen, sampling.need_filter)
        tokens.append(token)
        probs.append(q)
    return torch.stack(tokens, 1), torch.stack(probs, 1)


def decode_step_batch(batch):
    """A shallow copy of a scheduler decode batch shown to a runner as a plain DECODE batch (no spec info,
    no logprobs, no hidden states), so it replays that runner's decode CUDA graph."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    step = copy.copy(batch)
    step.forward_mode, step.spec_info, step.return_logprob = ForwardMode.DECODE, None, False
    step.spec_algorithm = SpeculativeAlgorithm.NONE
    step.return_hidden_states = False
    return step


def usable_k(k: int, prepared: list[int]) -> int:
    """The largest prepared K at most ``k`` (a K whose graphs failed to capture is skipped; 0 is always prepared)."""
    return max(x for x in prepared if x <= k)


PLAIN_K0_ENV = "ER_VERL_PLAIN_K0"  # "1" (default): K=0 is a plain target DECODE step; "0": SGLang's 1-token verify


def plain_k0_enabled(environ=None) -> bool:
    raw = (environ if environ is not None else os.environ).get(PLAIN_K0_ENV, "").strip() or "1"
    if raw not in ("0", "1"):
        raise ValueError(f"{PLAIN_K0_ENV}={raw!r}: expected 1 (K=0 as a plain decode step) or 0 (SGLang's verify)")
    return raw == "1"


K0_SAMPLER_ENV = "ER_VERL_K0_SAMPLER"


def gumbel_k0_enabled(environ=None) -> bool:
    """``ER_VERL_K0_SAMPLER``: "torch" (default, ``verify.sample_tokens``) or "gumbel" (``gumbel.sample_tokens``
    for K=0 batches without top-k/top-p/min-p). The Gumbel kernel passes its GPU tests (H200, 2026-11-26) but a
    rollout with it was not faster (``gumbel``'s docstring), so it stays opt-in."""
    raw = (environ if environ is not None else os.environ).get(K0_SAMPLER_ENV, "").strip() or "torch"
    if raw not in ("torch", "gumbel"):
        raise ValueError(f"{K0_SAMPLER_ENV}={raw!r}: expected torch (default) or gumbel")
    return raw == "gumbel"


PLAIN_GRAPH_MAX_BS_ENV = "ER_VERL_PLAIN_GRAPH_MAX_BS"


def plain_graph_max_bs(environ=None) -> int | None:
    """``ER_VERL_PLAIN_GRAPH_MAX_BS``: the largest batch the K=0 decode graphs cover, or None (the server's
    decode graph list, as for the drafter and verify graphs). Verify graphs of K+1 tokens per request may be
    capped low (FlashInfer's workspace, pitfall 5) while K=0 graphs should reach at least plain SGLang's: above
    them the target's decode runs eagerly, bound by host launches at bs 256-400 on the H200 (the server sets
    ``server_args.K0_GRAPH_MAX_BS``, 512)."""
    raw = (environ if environ is not None else os.environ).get(PLAIN_GRAPH_MAX_BS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{PLAIN_GRAPH_MAX_BS_ENV}={raw!r}: expected a batch size >= 1 (or unset)")
    return int(raw)


@contextlib.contextmanager
def decode_graph_bs(server_args, max_bs: int | None):
    """While capturing: SGLang's decode graph batch sizes extended to ``max_bs`` (SGLang's own list for that
    max); never shrunk, restored afterwards."""
    cfg = server_args.cuda_graph_config.decode
    saved = cfg.bs, cfg.max_bs
    if max_bs is not None and max_bs > max(cfg.bs or [0]):
        cfg.bs, cfg.max_bs = server_args._generate_decode_cuda_graph_batch_sizes(max_bs), max_bs
    try:
        yield
    finally:
        cfg.bs, cfg.max_bs = saved


def plain_step(worker, batch, graphs, gen: torch.Generator):
    """K = 0 as one plain target DECODE forward.

    The draft runner (the target's KV pool and slot table) runs the *target* model: ``graphs``, the target's
    own decode CUDA graphs captured on that runner, when they cover the batch; above them, the same forward
    eagerly (``graphs.attn_backend`` planned for this batch, as SGLang's eager decode), never SGLang's
    one-token TARGET_VERIFY pass (2x slower than a plain eager decode at bs 256-511 on the H200). The bonus
    token x̂ at position n is fed, its target K/V written to ``req_to_token[r, n]``, and the next token is
    drawn from p by ``verify.sample_tokens`` (SGLang's temperature / top-k / top-p / min-p semantics, greedy =
    argmax; the same draws as ``verify.draft_sample`` without building q). With ``ER_VERL_K0_SAMPLER=gumbel``
    (opt-in; GPU-tested, but a rollout with it was not faster) a batch without filtering is drawn by
    ``gumbel.sample_tokens``, one Triton pass over the logits. On the H200 this lean step
    (~20 fewer eager ops than with ``draft_sample`` and ``round_fields``) cut the host time per K=0 call from
    ~2.0 to ~1.1 ms and ran 186 / 1381 / 4677 tok/s at bs 1 / 8 / 32 against 183 / 1363 / 4608 (plain SGLang
    188 / 1395 / 4722; ``results/issue4_lean_k0_h200.json``)."""
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    runner = worker.drafter.runner
    step = decode_step_batch(batch)
    slot = k0_slots(runner.req_to_token_pool.req_to_token, batch.req_pool_indices, batch.seq_lens)
    _set_decode_step(step, batch, batch.spec_info.bonus_tokens.to(torch.int64), slot, 1)
    step.capture_hidden_mode = CaptureHiddenMode.NULL
    forward_batch = ForwardBatch.init_new(step, runner)
    can_graph = bool(graphs.can_run_graph(forward_batch))
    with forward_context(ForwardContext(attn_backend=graphs.attn_backend)):
        if can_graph:
            logits_output = graphs.execute(forward_batch)
        else:
            # An eager step publishes no WAR read-done event (only a decode graph replay does); one left by an
            # earlier draft step must not stand for this forward, which reads the shared buffers to the end.
            runner.war_fastpath_read_done_event = None
            graphs.attn_backend.init_forward_metadata(forward_batch)
            target = worker.target_worker.model_runner.model
            logits_output = target.forward(forward_batch.input_ids, forward_batch.positions, forward_batch)
    profiler = getattr(worker, "profiler", None)
    if profiler is not None:
        profiler.launched()
    s = SamplingTensors.of(batch.sampling_info)
    logits = logits_output.next_token_logits
    if logits.is_cuda and not s.need_filter and getattr(worker, "gumbel_k0", False):
        from er_verl.engine import gumbel  # one Triton pass over the logits instead of ~8 torch kernels

        token = gumbel.sample_tokens(logits, s.temperature, s.top_k, gen)
    else:
        token = verify.sample_tokens(logits, s.temperature, s.top_k, s.top_p, s.min_p, gen, s.need_filter)
    return _result(batch, batch.seq_lens, logits_output, token[:, None], None, 0, s, can_graph=can_graph,
                   keep_alive=forward_batch, fields=k0_fields(token, batch.seq_lens))


def _set_decode_step(step, batch, token, slots, ahead: int) -> None:
    """Fields of a DECODE batch whose current token sits at position seq_lens + ahead − 1."""
    step.input_ids = token
    step.out_cache_loc = slots
    step.seq_lens = batch.seq_lens + ahead
    step.orig_seq_lens = None if batch.orig_seq_lens is None else batch.orig_seq_lens + ahead
    step.seq_lens_cpu = None if batch.seq_lens_cpu is None else batch.seq_lens_cpu + ahead
    step.seq_lens_cpu_cache = None
    if batch.seq_lens_sum is not None:
        step.seq_lens_sum = batch.seq_lens_sum + ahead * len(batch.seq_lens)
    elif step.seq_lens_cpu is not None:
        step.seq_lens_sum = int(step.seq_lens_cpu.sum())
    else:  # a GPU-only batch (a backend without needs_cpu_seq_lens, e.g. triton): stay sync-free
        step.seq_lens_sum = None


def chain_verify_input(worker, batch, draft_tokens: torch.Tensor, k: int):
    """SGLang's EagleVerifyInput for the chain [x̂, d_0 .. d_{K-1}] (topk=1), as EagleDraftWorker.draft."""
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode
    from sglang.srt.speculative.eagle_info import EagleVerifyInput
    from sglang.srt.speculative.eagle_utils import TreeMaskMode, build_tree_kernel_efficient

    bs, device = batch.seq_lens.shape[0], batch.seq_lens.device
    attn = worker.target_worker.model_runner.attn_backend
    mask_buf, position_buf = attn.get_verify_buffers_to_fill_after_draft()
    seq_lens_sum = batch.seq_lens_sum
    if seq_lens_sum is None:
        seq_lens_sum = bs * attn.max_context_len if mask_buf is None else 0
    parents = torch.arange(-1, (k if k > 1 else 0) - 1, dtype=torch.long, device=device).repeat(bs, 1)
    scores_index = torch.arange(k, dtype=torch.long, device=device).repeat(bs, 1)
    bonus = batch.spec_info.bonus_tokens
    mask, positions, r_index, r_next, r_sibling, flat_tokens = build_tree_kernel_efficient(
        bonus, parents, scores_index, draft_tokens.to(bonus.dtype), batch.seq_lens, seq_lens_sum,
        1, k, k + 1, TreeMaskMode.FULL_MASK, mask_buf, position_buf,
    )
    return EagleVerifyInput(
        draft_token=flat_tokens, custom_mask=mask, positions=positions, retrieve_index=r_index,
        retrieve_next_token=r_next, retrieve_next_sibling=r_sibling, retrieve_cum_len=None,
        spec_steps=k, topk=1, draft_token_num=k + 1, capture_hidden_mode=CaptureHiddenMode.NULL,
        seq_lens_sum=None, seq_lens_cpu=None,
    )


def target_verify(worker, batch, verify_input, k: int):
    """The target's TARGET_VERIFY forward over K+1 positions (stock ``EAGLEWorkerV2.verify`` minus sampling).

    Returns (ForwardBatchOutput, verify ForwardBatch, can_run_cuda_graph)."""
    from sglang.srt.speculative.eagle_utils import eagle_prepare_for_verify
    from sglang.srt.speculative.spec_utils import record_stream_each, record_stream_for_v2_verify

    stream = torch.get_device_module(worker.device).current_stream()
    batch.spec_info = verify_input
    record_stream_for_v2_verify(batch, verify_input, stream)
    verify_input.num_tokens_per_req = k + 1
    with worker.plan_stream_ctx:
        forward_batch, can_graph = eagle_prepare_for_verify(
            verify_input, worker.req_to_token_pool, batch, worker.target_worker)
    record_stream_each((batch.input_ids, batch.out_cache_loc), stream)
    if worker.plan_stream:  # server_args.self_draft_env turns the plan stream off (pitfall 19)
        stream.wait_stream(worker.plan_stream)
    out = worker.target_worker.forward_batch_generation(batch=None, forward_batch=forward_batch, is_verify=True)
    return out, forward_batch, can_graph


class ForcedWarning:
    """Rate-limited loud warning while ``ER_VERL_FORCE_ACCEPT`` is active (every round calls it)."""

    def __init__(self, every_s: float = WARN_EVERY_S, clock=time.monotonic):
        self.every_s, self.clock, self.last, self.rounds = every_s, clock, None, 0

    def __call__(self, alpha: float) -> bool:
        self.rounds += 1
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            return False
        self.last = now
        if isinstance(alpha, list):
            alpha = sorted({a[0] for a in alpha})
        print(f"er_verl[scheduler]: WARNING {verify.FORCE_ACCEPT_ENV}={alpha}: draft acceptance is FORCED "
              f"({self.rounds} rounds so far); outputs do NOT follow the model's distribution — systems "
              "measurements only", flush=True)
        return True


def tag_forced(reqs, alpha, k: int) -> None:
    """Tag each request's per-token ``customized_info`` (streamed to meta_info) with its α (a float, or
    ``batch_alpha``'s per-request [[α], ...]), covering this round."""
    for i, req in enumerate(reqs):
        a = alpha[i][0] if isinstance(alpha, list) else alpha
        _tag_ahead(req, FORCED_TAG, a, k, pad=a)


class RoundCounts:
    """Per-request drafted tokens and speculative rounds, counted when SGLang processes a decode result.

    The worker records each launched decode batch (:meth:`launched`: its requests and K, K = 0 included);
    SGLang processes results in launch order and calls the worker's ``on_verify_complete_cpu`` once per
    result, which calls :meth:`processed`. There a request is counted exactly when SGLang counts a verify
    pass for it (``spec_verify_ct``): not finished and not retracted. So with the overlap scheduler a
    round launched after a request's last one (its output discarded) is not counted. A result whose batch
    size matches no recorded launch drops the stale records before it (metrics only; never raises)."""

    def __init__(self, capacity: int = 64):
        self.pending: deque = deque(maxlen=capacity)  # (requests, K) per launched decode batch, oldest first

    def launched(self, reqs, k: int) -> None:
        self.pending.append((list(reqs), k))

    def processed(self, batch_size: int) -> None:
        while self.pending:
            reqs, k = self.pending.popleft()
            if len(reqs) == batch_size:
                if k > 0:
                    live = [r for r in reqs if not (r.finished() or getattr(r, "is_retracted", False))]
                    tag_round_counts(live, k)
                return


def tag_round_counts(reqs, k: int) -> None:
    """For a processed speculative round of ``k`` drafts: add ``k`` drafted tokens, one round and one round
    of length ``k`` to each request's running totals, and tag its next ``k + 1`` output positions with them,
    so the last streamed token carries the totals (the per-K counts as a fresh list each round)."""
    for req in reqs:
        totals = (getattr(req, "er_verl_drafted", 0) + k, getattr(req, "er_verl_spec_rounds", 0) + 1)
        req.er_verl_drafted, req.er_verl_spec_rounds = totals
        by_k = list(getattr(req, "er_verl_k_rounds", ()))
        by_k += [0] * (k - len(by_k))
        by_k[k - 1] += 1
        req.er_verl_k_rounds = by_k
        for key, total in zip((DRAFTED_TAG, ROUNDS_TAG, K_ROUNDS_TAG), (*totals, by_k)):
            _tag_ahead(req, key, total, k, pad=None)


def tag_requant(reqs, ms: float) -> None:
    """Tag each request's current output position with the drafter's requant time ``ms`` (called for the
    first decode batch after a requant, so the requests of that rollout carry what their weight sync cost)."""
    for req in reqs:
        _tag_ahead(req, REQUANT_TAG, float(ms), 0, pad=None)


def ensure_tags(reqs, keys=TAG_KEYS) -> None:
    """Give every request of a decode batch each tag key (an empty list if it has none yet). SGLang's output
    streamer collects ``customized_info[key]`` only from requests that have the key, and the tokenizer manager
    then indexes that list by the batch position of every request: one request without a key in a batch
    where another has it raises IndexError there and kills the server (seen on the H200 when the gate first
    turned on in the middle of a verl rollout, a request finishing in its first speculative round)."""
    for req in reqs:
        info = req.customized_info
        if info is None:
            req.customized_info = info = {}
        for key in keys:
            if key not in info:
                info[key] = []


def _tag_ahead(req, key: str, value, k: int, pad) -> None:
    """Per-token tag ``key`` of ``req.customized_info`` (SGLang streams ``tag[sent:len(output_ids)]``): the
    next ``k + 1`` positions from ``len(output_ids)`` get ``value`` (overwriting earlier look-ahead); untagged
    positions before them get ``pad`` (None: the last tag value, or 0)."""
    info = req.customized_info if req.customized_info is not None else {}
    req.customized_info = info
    tag = info.setdefault(key, [])
    start = len(req.output_ids)
    del tag[start:]
    fill = pad if pad is not None else (tag[-1] if tag else 0)
    tag.extend([fill] * (start - len(tag)) + [value] * (k + 1))


def sample(logits: torch.Tensor, draft_tokens, draft_probs, s: SamplingTensors, gen, alpha):
    """(output_tokens [B, K+1], num_emitted [B]) by the exact sampler, or the forced one when α is set."""
    bs, k = draft_tokens.shape
    num_draft = torch.full((bs,), k, dtype=torch.int64, device=logits.device)
    uniforms = torch.rand((bs, k), generator=gen, device=logits.device)
    if alpha is None:
        out, emitted, _ = verify.sample_round(logits, draft_probs, draft_tokens, num_draft, s.temperature,
                                              s.top_k, s.top_p, s.min_p, uniforms, gen, s.need_filter)
    else:
        if isinstance(alpha, list):
            alpha = host_to_device(alpha, logits.device)  # [B, 1]
        out, emitted, _ = verify.sample_round_forced(alpha, logits, draft_tokens, num_draft, s.temperature,
                                                     s.top_k, s.top_p, s.min_p, uniforms, gen, s.need_filter)
    return out, emitted


def host_to_device(values: list, device) -> torch.Tensor:
    """fp32 tensor of ``values`` on ``device`` without blocking the host: ``torch.tensor(values, device=cuda)``
    copies from pageable memory, which waits for all work queued on the stream. Called after the verify pass was
    queued, that wait kept the host from preparing the next batch until the round had finished (H200 rollout
    run 16, per-group forced α: host_ms = gpu_ms and ~2.4 ms of GPU idle per K=1 round at bs 29-32)."""
    host = torch.tensor(values, dtype=torch.float32)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def run_round(worker, batch, k: int, gen: torch.Generator, alpha=None, after_draft=None, before_draft=None):
    """Draft K, verify K+1, sample; returns SGLang's GenerationBatchResult for this decode batch.
    ``before_draft()`` / ``after_draft()`` (optional) are called just before the first draft forward and
    between drafting and verifying (the controller's timing)."""
    s = SamplingTensors.of(batch.sampling_info)
    seq_lens = batch.seq_lens
    profiler = getattr(worker, "profiler", None)
    draft_tokens, draft_probs = draft_chain(worker.drafter, batch, k, s, gen,
                                            profiler.launched if profiler is not None else None, before_draft)
    if after_draft is not None:
        after_draft()
    worker.exact_lengths(batch)  # sync_free: the drafts were launched from a lower bound; the verify plans from exact lengths
    out, forward_batch, can_graph = target_verify(worker, batch, chain_verify_input(worker, batch, draft_tokens, k), k)
    logits_output = out.logits_output
    logits = logits_output.next_token_logits.view(len(seq_lens), k + 1, -1)    # [B, K+1, V]
    tokens, emitted = sample(logits, draft_tokens, draft_probs, s, gen, alpha)
    return _result(batch, seq_lens, logits_output, tokens, emitted, k, s, can_graph, forward_batch,
                   routed_experts_output=out.routed_experts_output, indexer_topk_output=out.indexer_topk_output)


def _result(batch, seq_lens, logits_output, tokens, emitted, k: int, s: SamplingTensors, can_graph: bool,
            keep_alive, fields: RoundFields | None = None, **extra):
    """SGLang's GenerationBatchResult for a round that emitted ``tokens`` ([B, K+1], −1-padded), with the
    target's logprobs when the batch asks for them. ``fields`` (K=0: :func:`k0_fields`) may come precomputed;
    then ``emitted`` may be None (one token each)."""
    from sglang.srt.layers.utils.logprob import compute_spec_v2_logprobs
    from sglang.srt.managers.scheduler import GenerationBatchResult
    from sglang.srt.speculative.eagle_info import EagleDraftInput

    if fields is None:
        fields = round_fields(tokens, emitted, seq_lens)  # seq_lens as before the round (verify rebinds the batch's)
    if batch.return_logprob:
        if emitted is None:
            emitted = torch.ones_like(tokens[:, 0])
        logits = logits_output.next_token_logits.view(len(seq_lens), k + 1, -1)
        compute_spec_v2_logprobs(batch, logits_output, fields.next_token_ids, accept_index(emitted, k), k)
        logits_output.next_token_logprobs = verify.target_logprobs(logits, tokens, s.temperature, s.top_k)
    return GenerationBatchResult(
        logits_output=logits_output, next_token_ids=fields.next_token_ids, can_run_cuda_graph=can_graph,
        speculative_num_draft_tokens=k + 1, next_draft_input=EagleDraftInput(bonus_tokens=fields.bonus_tokens),
        accept_lens=fields.accept_lens, new_seq_lens=fields.new_seq_lens, extra_keep_alive_refs=[keep_alive],
        **extra,
    )
