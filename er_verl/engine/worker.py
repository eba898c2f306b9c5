"""The classes SGLang instantiates for STANDALONE speculation once er_verl's plugin hooks are applied.

``SpeculativeAlgorithm.create_worker`` returns ``StandaloneWorkerV2`` for STANDALONE, and that class
builds ``StandaloneDraftWorker`` by its module-global name; two class REPLACE hooks
(:data:`HOOKS`, registered by ``plugin.register``) make those :class:`SelfSpecWorkerV2` and
:class:`SelfDraftWorker`. Two function hooks complete the picture: ``get_model_loader`` builds the
draft from the target (``loader.py``) and ``_init_pools`` gives the draft runner the target's KV pool.

Launch sequence inside SGLang's scheduler (``Scheduler.init_model_worker``) and what changes:

1. target TpModelWorker loads the checkpoint (stock);
2. :class:`SelfSpecWorkerV2` → :class:`SelfDraftWorker` → draft TpModelWorker → ``load_model``: the
   drafter is built on ``meta`` with everything unquantized aliased to the target — 0 bytes;
3. target KV pool profiled and allocated (stock; no ``speculative_draft_model_path``, so no per-token
   scaling for a draft KV): token capacity equals plain SGLang's;
4. :meth:`SelfDraftWorker.alloc_memory_pool`: the draft runner takes the target's req_to_token pool,
   allocator and KV pool (no KV of its own); the drafter's buffers are allocated and requantized;
5. attention backends and CUDA graphs: no stock draft backends/graphs (the stock draft path writes
   draft-model K/V into the shared pool, see below); the target gets a 1-token TARGET_VERIFY state.

Why the stock draft path is off: with a shared KV pool, stock STANDALONE's ``_draft_extend_for_prefill``
(prompt shifted by one token) and ``_draft_extend_for_decode`` (accepted tokens) would overwrite the
*target's* K/V at those positions with the drafter's (shifted) K/V, corrupting the target's cache. Only
the K draft steps' own writes (positions the verify pass rewrites) are safe: ``spec_round.py`` runs
exactly those (K drafter DECODE steps on the shared KV, one TARGET_VERIFY pass, exact sampling). K per
decode batch is ``ER_VERL_SPEC_K`` (default 0: one plain target DECODE step, ``spec_round.plain_step``);
runtime states are prepared at init for every K in 0..Kmax. The drafter is kept requantized,
so speculation can start at any step without catch-up.
"""

from __future__ import annotations

import inspect
import os
import time

import torch
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode
from sglang.srt.speculative import standalone_worker_v2 as _sw2
from sglang.srt.speculative.adaptive_runtime_state import SpecRuntimeState
from sglang.srt.speculative.eagle_info import EagleDraftInput

from er_verl.config import config_from_json
from er_verl.engine import draft_window, loader, spec_round, sync_free, verify, verify_plan
from er_verl.engine.faults import oom_in_capture
from er_verl.engine.profile import DecodeSummary, RoundProfiler, profile_every, timeline_from_env, torch_windows_from_env
from er_verl.engine.self_spec import DecodeStats, SelfSpecMixin
from er_verl.engine.weight_sync import EVENTS

CONTROL_ENV = "ER_VERL_CONTROL"  # the EfficientConfig as JSON: turns the controller on (server.py sets it)
GROUP_PARAM = "er_group"  # = rollout.agent_loop.GROUP_KEY (not imported: that module imports verl)
REPORT_ENV = "ER_VERL_DRAFTER_REPORT"  # a JSONL path: one line of checks per requant (tests, debugging)
_DRAFT_INIT = inspect.signature(_sw2.StandaloneDraftWorker.__init__)


def control_config(environ=os.environ):
    """The server's EfficientConfig (``ER_VERL_CONTROL``, JSON), or None when the variable is unset. Read by the
    draft worker (the draft window) and the spec worker (the controller)."""
    raw = environ.get(CONTROL_ENV)
    return config_from_json(raw) if raw else None


def target_attention_backend(runner):
    """A new attention backend of the target's kind on the draft ``runner`` (for the K=0 graphs): SGLang gives a
    draft runner ``speculative_draft_attention_backend`` when it is set (``draft_attention="triton"``), so it is
    cleared for this call, and the runner's recorded backend names are kept."""
    args = runner.server_args
    saved = (args.speculative_draft_attention_backend, getattr(runner, "prefill_attention_backend_str", None),
             getattr(runner, "decode_attention_backend_str", None))
    args.speculative_draft_attention_backend = None
    try:
        return runner._get_attention_backend(init_new_workspace=True)
    finally:
        args.speculative_draft_attention_backend = saved[0]
        runner.prefill_attention_backend_str, runner.decode_attention_backend_str = saved[1:]


class SelfDraftWorker(_sw2.StandaloneDraftWorker):
    """StandaloneDraftWorker whose model is the target's self-drafter (``self.drafter``)."""

    def __init__(self, *args, **kwargs):
        target_worker = _DRAFT_INIT.bind(self, *args, **kwargs).arguments["target_worker"]
        with loader.draft_source(target_worker.model_runner.model):
            super().__init__(*args, **kwargs)
        drafter = getattr(self.draft_runner.loader, "drafter", None)
        if drafter is None:
            raise RuntimeError("er_verl: the draft model was not built by SelfDraftLoader (get_model_loader hook?)")
        self.drafter = drafter
        self.drafter.runner = self.draft_runner
        # capture_decode_graphs (run inside super().__init__) may already have set the target's K=0 graphs
        self.target_graphs = getattr(self, "target_graphs", None)

    def _install_draft_window(self) -> None:
        """``draft_kv_window`` of the server's EfficientConfig (``ER_VERL_CONTROL``): see ``draft_window``."""
        cfg = control_config()
        window = cfg.draft_kv_window if cfg else 0
        self.draft_kv_window = 0  # the window the draft steps really use (sync_free reads it)
        if window == 0:
            return
        why_not = draft_window.install(getattr(self.draft_runner, "attn_backend", None), window)
        self.draft_kv_window = 0 if why_not else window
        if why_not:
            print(f"er_verl[scheduler]: WARNING draft_kv_window={window} is not applied ({why_not}); "
                  "draft steps attend to the whole context", flush=True)
        else:
            print(f"er_verl[scheduler]: draft steps attend to the first {draft_window.SINKS} and the last {window} "
                  "positions of each request (draft_kv_window); verify reads the whole context", flush=True)

    def init_cuda_graphs(self, *args, **kwargs):
        """Stock init (the draft runner gets only its eager runner), then :meth:`capture_decode_graphs`."""
        super().init_cuda_graphs(*args, **kwargs)
        self.capture_decode_graphs()
        self._install_draft_window()

    def alloc_memory_pool(self, memory_pool_config=None, req_to_token_pool=None, token_to_kv_pool_allocator=None):
        """Share the target's pools (no draft KV), then allocate and requantize the drafter's buffers.

        Runs after the target's KV pool was profiled and allocated, so nothing here changes capacity.
        """
        target_runner = self.target_worker.model_runner
        setattr(self.draft_runner, loader.SHARED_KV_ATTR, target_runner.token_to_kv_pool)
        super().alloc_memory_pool(memory_pool_config, req_to_token_pool, token_to_kv_pool_allocator)
        loader.materialize_drafter_(self.drafter, target_runner.model, self.draft_runner.memory_saver_adapter)
        self.drafter.refresh(target_runner.model)

    def init_attention_backend(self):
        """No stock multi-step draft / draft-extend backends: the drafter is not run by the stock loop."""
        self.draft_attn_backend = None
        self.draft_extend_attn_backend = None
        self.draft_runner.draft_attn_backend = None

    def _capture_cuda_graphs(self):
        """No stock multi-step draft / draft-extend graphs (also called once per adaptive runtime state)."""
        self.cuda_graph_runner = None
        self.cuda_graph_runner_for_draft_extend = None


    def capture_decode_graphs(self) -> None:
        """SGLang's own DecodeCudaGraphRunner on the draft runner, captured as for a non-speculative model
        (one token per request): every draft step of ``spec_round.draft_chain`` then replays the graph
        for its batch size. The graphs read the drafter's int4 buffers, which requant rewrites in place.
        The runner is shown ``spec_algorithm`` NONE only while capturing (a speculative runner would
        capture TARGET_VERIFY graphs); draft steps are plain DECODE batches with ``spec_info`` None.

        With ``ER_VERL_PLAIN_K0`` on (the default), a second set is captured on the same runner with the *target* model
        and its own attention backend (``self.target_graphs``): K=0 then runs as a plain DECODE step of the
        target (``spec_round.plain_step``) instead of SGLang's one-token TARGET_VERIFY pass. Those graphs reach
        ``ER_VERL_PLAIN_GRAPH_MAX_BS`` when it is above the server's list (``spec_round.plain_graph_max_bs``)."""
        from sglang.srt.model_executor.runner.decode_cuda_graph_runner import DecodeCudaGraphRunner
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        started = time.perf_counter()
        runner = self.draft_runner
        faults = runner.loader.drafter.faults
        saved = runner.spec_algorithm, runner.model
        runner.spec_algorithm = SpeculativeAlgorithm.NONE
        self.target_graphs = None
        try:
            try:
                with oom_in_capture(faults, runner.model):
                    runner.init_decode_cuda_graph()
            except Exception as exc:  # noqa: BLE001 - e.g. OOM while capturing: no speculation on this server
                runner.decode_cuda_graph_runner = None
                self.draft_graphs_failed = True
                capture_failed("the drafter's decode graphs", exc, "speculation stays off on this server (K=0)")
            if spec_round.plain_k0_enabled():
                runner.model = self.target_worker.model_runner.model
                try:
                    with oom_in_capture(faults, runner.model):
                        backend = target_attention_backend(runner)
                        with spec_round.decode_graph_bs(runner.server_args, spec_round.plain_graph_max_bs()):
                            self.target_graphs = DecodeCudaGraphRunner(runner, attn_backend=backend)
                except Exception as exc:  # noqa: BLE001
                    capture_failed("the target's K=0 decode graphs", exc, "K=0 takes SGLang's one-token verify step")
        finally:
            runner.spec_algorithm, runner.model = saved
        graphs = runner.decode_cuda_graph_runner
        print(f"er_verl[scheduler]: drafter decode CUDA graphs for bs {getattr(graphs, 'capture_bs', None)}"
              + (f"; target plain-decode graphs for K=0 up to bs {self.target_graphs.max_bs}"
                 if self.target_graphs is not None else "")
              + f" (captured in {time.perf_counter() - started:.1f} s)", flush=True)

    def _draft_extend_for_prefill(self, batch, target_hidden_states, next_token_ids, mm_input_embeds=None):
        """No draft prefill (it would overwrite the shared KV): the next round starts from the bonus token."""
        topk_p, topk_index = self._no_proposals(next_token_ids.shape[0])
        return EagleDraftInput(
            topk_p=topk_p, topk_index=topk_index, hidden_states=None, bonus_tokens=next_token_ids,
            num_tokens_per_req=1, num_tokens_for_logprob_per_req=1,
        )

    def _draft_extend_for_decode(self, batch, batch_result):
        """No draft extend: shape-valid stubs for the FutureMap (as SGLang's skipped-extend path)."""
        draft_input = batch_result.next_draft_input
        draft_input.topk_p, draft_input.topk_index = self._no_proposals(len(batch.seq_lens))
        draft_input.hidden_states = None

    def _no_proposals(self, batch_size: int):
        shape = (batch_size, self.topk)
        return (torch.zeros(shape, dtype=torch.float32, device=self.device),
                torch.zeros(shape, dtype=torch.int64, device=self.device))


class SelfSpecWorkerV2(SelfSpecMixin, _sw2.StandaloneWorkerV2):
    """STANDALONE worker with a KV-sharing self-drafter: K=0 plain steps or shared-KV speculative rounds.

    ``runtime_states`` holds one SGLang runtime state per K in 0..Kmax: the launch state (target verify
    graphs for Kmax+1 tokens) and ``build_adaptive_runtime_state(K, K+1)`` for the others (K = 0: a
    1-token verify, i.e. a plain target step). K per batch: ``ER_VERL_SPEC_K`` by default, or the
    smallest ``custom_params["er_k"]`` of its requests. ``ER_VERL_FORCE_ACCEPT=α`` replaces the exact
    test by coin flips (``verify.sample_round_forced``; systems measurements only, warned and tagged);
    only with it set may requests choose their own α (``custom_params["er_force_alpha"]``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self._draft_worker, SelfDraftWorker):
            raise RuntimeError("er_verl: StandaloneDraftWorker was not replaced by SelfDraftWorker (plugin hooks?)")
        self.tp_rank = self._draft_worker.tp_rank  # stock StandaloneWorkerV2 never sets it (pitfall 1)
        self.runtime_states: dict[int, SpecRuntimeState] = {}
        self.decode_stats = DecodeStats()
        self.speculative_num_steps_max = self.speculative_num_steps  # Kmax (the launch state)
        self.forced_k = spec_round.forced_k_from_env(self.speculative_num_steps)
        self.force_alpha = verify.forced_accept_alpha()
        self.gumbel_k0 = spec_round.gumbel_k0_enabled()  # read once: a bad value fails the launch, not a step
        self.batch_alpha = self.force_alpha  # this batch's α (per-request overrides), set by on_batch
        self.bad_params_warned = False
        self.forced_warning = spec_round.ForcedWarning()
        self.spec_rounds = 0
        self.round_counts = spec_round.RoundCounts()  # verl's per-request drafted / rounds, at result time
        self.requants_tagged = 0  # drafter requants whose time went out on a batch's requests
        every = profile_every()
        self.last_groups: list = []  # the last decode batch's group keys (the profile's controller line)
        self.profiler = RoundProfiler(every, describe=self._describe_controller) if every else None
        self.timeline = timeline_from_env()
        self.torch_windows = torch_windows_from_env()
        self.summary = DecodeSummary()
        EVENTS.subscribe(self.summary.report)
        self.feedback = self._controller_feedback()
        if self.feedback is not None:
            self.feedback.on_round = self.summary.note_round
            self.summary.probes = lambda: self.feedback.controller.decisions["probe"]
            EVENTS.subscribe(self.feedback.controller.on_weight_sync)
        self._generator = None
        self.presync = None          # (batch, K) decided at resolve time (presync_k), taken by the decode call
        self.pending_lengths = None  # sync_free.LengthFetch of this decode call's exact host lengths
        sync_free.ACTIVE["worker"] = self if sync_free.enabled() else None
        EVENTS.subscribe(self.drafter.mark_dirty)
        report = os.environ.get(REPORT_ENV)
        if report:
            from er_verl.engine.checks import ReportWriter

            self.drafter.listeners.append(ReportWriter(report, self.target_worker.model_runner, self.decode_stats))

    def init_cuda_graphs(self):
        super().init_cuda_graphs()
        self._use_plain_decode()

    def _build_trivial_verify_input(self, batch):
        """SGLang's K=0 verify input asks for FULL hidden states (EAGLE drafts from them), but a STANDALONE
        target's verify graphs are captured with NULL: FULL would make every K=0 step skip its CUDA
        graph (``DecodeCudaGraphRunner.can_run_graph``). The self-drafter needs no hidden states."""
        verify_input = super()._build_trivial_verify_input(batch)
        verify_input.capture_hidden_mode = CaptureHiddenMode.NULL
        return verify_input

    def _use_plain_decode(self) -> None:
        """Keep the launch (Kmax) state for later and switch to K=0: one target token per round."""
        runner = self.target_worker.model_runner
        self.runtime_states[self.speculative_num_steps] = SpecRuntimeState(
            speculative_num_steps=self.speculative_num_steps,
            speculative_num_draft_tokens=self.speculative_num_draft_tokens,
            draft_attn_backend=None, cuda_graph_runner=None,
            target_attn_backend=runner.attn_backend, target_graph_runner=runner.decode_cuda_graph_runner,
            draft_extend_attn_backend=None, cuda_graph_runner_for_draft_extend=None,
        )
        target_model = runner.model
        # Without the drafter's graphs a draft step would run eagerly, slower than the target step it saves:
        # then only K=0 is prepared (no verify graphs captured for K that will never run).
        no_drafts = getattr(self._draft_worker, "draft_graphs_failed", False)
        started = time.perf_counter()
        for k in range(1 if no_drafts else self.speculative_num_steps):  # K = 0 (plain) .. Kmax − 1
            try:
                with oom_in_capture(self.drafter.faults, target_model):
                    self.runtime_states[k] = self.build_adaptive_runtime_state(k, k + 1)
            except Exception as exc:  # noqa: BLE001 - e.g. OOM while capturing this K's verify graphs
                if k == 0:
                    raise RuntimeError(
                        f"er_verl: building the K=0 (plain decode) runtime state failed ({exc!r}); it is required. "
                        "Lower cuda_graph_max_bs or mem_fraction_static, or launch without speculation.") from exc
                capture_failed(f"the verify state for K={k}", exc, f"a batch asking for K={k} gets the next lower K")
        self.prepared_k = [0] if no_drafts else sorted(self.runtime_states)
        self.spec_graph_max_bs = spec_graph_max_bs(self._draft_worker.draft_runner.decode_cuda_graph_runner,
                                                   runner.decode_cuda_graph_runner)
        plain = self.runtime_states[0]
        self.apply_runtime_state(plain)
        print(f"er_verl[scheduler]: self-drafter ready ({self.drafter.kind}); decoding with K={self.forced_k} "
              f"(K usable: {self.prepared_k}; the controller speculates up to bs {self.spec_graph_max_bs}; "
              f"forced acceptance {self.force_alpha}; verify states for K < Kmax built in "
              f"{time.perf_counter() - started:.1f} s)", flush=True)

    @property
    def spec_v2_attn_backends(self) -> tuple:
        """The target's backend and the draft runner's (FlashInfer decode over the shared pool)."""
        return (self.target_worker.model_runner.attn_backend, self._draft_worker.draft_runner.attn_backend)

    def round_k(self, batch) -> int:
        """K for this decode batch: ``forced_k`` when the drafter is ready and the batch is supported, else 0.

        Routed to K=0: unsupported batches (:meth:`round_k_unsupported`, which then take SGLang's own step)."""
        if SelfSpecWorkerV2.round_k_unsupported(batch) or not self.speculation_ready:
            return 0
        default = self.forced_k
        if self.feedback is not None and not any(spec_round.K_PARAM in (p or {}) for p in request_params(batch)):
            if len(batch.reqs) > self.spec_graph_max_bs:
                return 0  # the controller never speculates past the draft / verify graphs (eager rounds lose)
            default = min(self.feedback.controller.choose(group_keys(batch)), self.speculative_num_steps_max)
        k = self._from_params(spec_round.batch_k, batch, default, self.speculative_num_steps_max)
        return spec_round.usable_k(k, self.prepared_k)

    def exact_lengths(self, batch) -> None:
        sync_free.exact_lengths(self, batch)

    def presync_k(self, batch) -> int:
        """At SGLang's resolve of a decode batch (``sync_free.resolve_around``): its K when the round can be prepared
        from stale host lengths (``sync_free.eligible``), else 0. Whenever K is decided here, the decode call that
        follows takes that decision (:meth:`decided_k`) instead of asking the controller again."""
        self.presync, self.pending_lengths = None, None
        window = getattr(self._draft_worker, "draft_kv_window", 0)
        draft_backend = getattr(getattr(self._draft_worker, "draft_runner", None), "attn_backend", None)
        fits = sync_free.eligible(batch.seq_lens_cpu, window, len(batch.reqs), getattr(self, "spec_graph_max_bs", 0),
                                  gpu_planned=not getattr(draft_backend, "needs_cpu_seq_lens", True))
        if not fits or not batch.forward_mode.is_decode() or self.drafter.is_dirty \
                or getattr(batch.spec_info, "bonus_tokens", None) is None:
            return 0
        k = self.round_k(batch)
        self.presync = (batch, k)
        return k

    @staticmethod
    def round_k_unsupported(batch) -> bool:
        """Batches our steps do not handle (the stock path runs them): idle, grammars, penalties / logit
        bias (not in verify.py yet), or no bonus token from the previous step."""
        info = batch.sampling_info
        return (batch.forward_mode.is_idle() or batch.has_grammar or info is None
                or info.acc_additive_penalties is not None or info.acc_scaling_penalties is not None
                or info.logit_bias is not None or getattr(batch.spec_info, "bonus_tokens", None) is None)

    def _controller_feedback(self):
        """The controller (``ER_VERL_CONTROL``: the EfficientConfig as JSON, set by the server) with its
        feedback queue, or None: no controller when ``ER_VERL_SPEC_K`` forces K or the variable is unset."""
        cfg = control_config()
        if cfg is None or self.forced_k:
            return None
        from er_verl.control.controller import Controller
        from er_verl.control.cost_model import ModelShape
        from er_verl.engine.checks import target_weight_bytes
        from er_verl.engine.feedback import RoundFeedback

        shape = ModelShape(num_params=target_weight_bytes(self.target_worker.model_runner.model) / 2.0)
        controller = Controller.from_config(cfg, shape)
        print(f"er_verl[scheduler]: controller on (gate {cfg.gate}, bandit {cfg.bandit}, Kmax {cfg.max_draft_len})",
              flush=True)
        return RoundFeedback(controller)

    def on_verify_complete_cpu(self, num_correct_drafts_per_req: list, batch_size: int = 0) -> None:
        """SGLang's result-time hook (accepted counts on the CPU, no sync): count this result's round."""
        super().on_verify_complete_cpu(num_correct_drafts_per_req, batch_size)
        self.round_counts.processed(len(num_correct_drafts_per_req))

    def before_decode(self, batch) -> None:
        if self.feedback is not None:
            self.feedback.begin()

    def after_decode(self, batch, k: int, result) -> None:
        self.summary.record(len(batch.reqs), k)
        self.round_counts.launched(batch.reqs, k)
        if self.drafter.num_requants != self.requants_tagged and self.drafter.last_seconds is not None:
            self.requants_tagged = self.drafter.num_requants
            spec_round.tag_requant(batch.reqs, self.drafter.last_seconds * 1e3)
        if self.timeline is not None:
            self.timeline.record(len(batch.reqs), k)
        if self.feedback is not None:
            groups = group_keys(batch)
            if self.profiler is not None:
                self.last_groups = groups
            # D2H copy queued before the end event: harvest reads it once that event completed (no wait).
            accepted = (result.accept_lens - 1).to("cpu", non_blocking=True) if k > 0 else None
            self.feedback.end(groups, k, accepted)

    def _describe_controller(self):
        """The controller's predictions for the last decode batch (one profile line), or None without one."""
        if self.feedback is None or not self.last_groups:
            return None
        return self.feedback.controller.describe(self.last_groups)

    def _from_params(self, pick, batch, default, *args):
        """``pick([custom_params of each request], default, *args)``; a bad value warns once and gives default."""
        try:
            return pick(request_params(batch), default, *args)
        except ValueError as err:
            if not self.bad_params_warned:
                self.bad_params_warned = True
                print(f"er_verl[scheduler]: WARNING {err}; using the server's default instead", flush=True)
            return default

    def use_k(self, k: int) -> None:
        self.apply_runtime_state(self.runtime_states[k])  # a no-op when K is unchanged

    def on_batch(self, batch) -> None:
        """Every request of every decode batch gets the round-count tag keys (``spec_round.ensure_tags``).
        With forced acceptance on: warn (rate-limited) and tag every request of every batch, so each
        streamed output carries the tag (the tokenizer manager indexes customized_info by request)."""
        if getattr(batch, "reqs", None):
            spec_round.ensure_tags(batch.reqs)
        if self.force_alpha is not None and getattr(batch, "reqs", None):
            self.batch_alpha = self._from_params(spec_round.batch_alpha, batch, self.force_alpha)
            self.forced_warning(self.batch_alpha)
            spec_round.tag_forced(batch.reqs, self.batch_alpha, self.speculative_num_steps_max)

    def plain_step(self, batch):
        """K=0 as a plain target DECODE step (``spec_round.plain_step``: its graph, or eager above the graphs),
        or None: then the stock one-token verify step runs (no target graphs captured, or a batch kind
        :meth:`round_k_unsupported` names). The new lengths were published before it
        (``SelfSpecMixin.forward_batch_generation``)."""
        graphs = getattr(self._draft_worker, "target_graphs", None)
        if graphs is None or self.round_k_unsupported(batch):
            return None
        result = spec_round.plain_step(self, batch, graphs, self._rng())
        self._draft_worker._draft_extend_for_decode(batch, result)
        return result

    def speculative_round(self, batch, k: int, on_publish=None):
        """One shared-KV round (``spec_round.run_round``); stubs the FutureMap's draft fields like K=0."""
        self.drafter.faults.check("round")  # ER_VERL_FAULT (reliability tests): raises here when asked to
        fb = self.feedback
        result = spec_round.run_round(self, batch, k, self._rng(), self.batch_alpha,
                                      after_draft=fb.drafted if fb else None,
                                      before_draft=fb.draft_started if fb else None)
        # Nothing is published before this point: a round that raised above falls back to a plain step.
        if on_publish is not None:
            on_publish(result.new_seq_lens)
        # SGLang's WAR barrier lets the next batch's scheduling overwrite shared buffers once the event below
        # fires; the last draft step's decode graph set it, but the verify pass read them after that. Cleared,
        # the barrier waits for this whole round (on the GPU; the CPU already waited for the publish above).
        self._draft_worker.draft_runner.war_fastpath_read_done_event = None
        self._draft_worker._draft_extend_for_decode(batch, result)
        self.spec_rounds += 1
        return result

    def _rng(self) -> torch.Generator:
        """The worker's sampling generator on its device, seeded from ``server_args.random_seed``."""
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(int(self.server_args.random_seed or 0))
        return self._generator


def spec_graph_max_bs(draft_graphs, verify_graphs) -> int:
    """The largest batch a speculative round replays CUDA graphs for: the drafter's decode graphs and the
    target's verify graphs both cover it (0 when either is missing). Above it a round would run its K draft
    steps and its verify pass eagerly; on the H200 (8B, bs 128-255) such rounds took 5-7x a plain step."""
    sizes = [getattr(g, "max_bs", 0) or 0 for g in (draft_graphs, verify_graphs)]
    return min(sizes)


def capture_failed(what: str, exc: BaseException, instead: str) -> None:
    """A CUDA-graph capture at launch raised (out of memory, typically): warn and free what it left cached."""
    torch.cuda.empty_cache()
    print(f"er_verl[scheduler]: WARNING capturing {what} failed ({exc!r}); {instead}", flush=True)


def request_params(batch) -> list:
    """``custom_params`` of each request of a scheduler batch (None where a request has none)."""
    return [getattr(r.sampling_params, "custom_params", None) for r in getattr(batch, "reqs", None) or []]


def group_keys(batch) -> list:
    """Each request's group: ``custom_params["er_group"]`` (the GRPO uid, set by the server), else its rid."""
    return [(p or {}).get(GROUP_PARAM, getattr(r, "rid", i))
            for i, (r, p) in enumerate(zip(batch.reqs, request_params(batch)))]


HOOKS = (
    ("sglang.srt.speculative.standalone_worker_v2.StandaloneWorkerV2", SelfSpecWorkerV2, "REPLACE"),
    ("sglang.srt.speculative.standalone_worker_v2.StandaloneDraftWorker", SelfDraftWorker, "REPLACE"),
    ("sglang.srt.model_loader.loader.get_model_loader", loader.get_model_loader_around, "AROUND"),
    (
        "sglang.srt.model_executor.model_runner_kv_cache_mixin.ModelRunnerKVCacheMixin._init_pools",
        loader.init_pools_around,
        "AROUND",
    ),
    ("sglang.srt.model_executor.model_runner.ModelRunner._get_attention_backend",
     verify_plan.attention_backend_around, "AROUND"),
    ("sglang.srt.managers.overlap_utils.FutureMap.resolve_seq_lens_cpu", sync_free.resolve_around, "AROUND"),
)
"""(target, hook, HookType name) for every self-drafter hook; ``plugin.register`` registers them."""
