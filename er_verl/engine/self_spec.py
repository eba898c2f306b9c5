"""SelfSpecMixin: where the self-draft worker departs from stock STANDALONE, written without sglang.

Mixed in before ``StandaloneWorkerV2`` (``worker.py``), so these methods win in the MRO:

* Weight updates go to the target only (verl never learns the drafter exists). SGLang's
  ``SchedulerWeightUpdaterManager`` sends ``update_weights_from_tensor`` to the draft worker *instead*
  of the target when one exists (stock STANDALONE then loads the tensors into both, and crashes on
  its missing ``tp_rank``, pitfall 1); here it is forwarded to the target. ``_from_disk`` and
  ``_from_ipc`` reach the draft worker *after* the target was updated, so there is nothing left to
  do (stock reloads a full-precision draft from the target's path, pitfall 2). ``_from_distributed``
  never reaches a draft worker in SGLang; it is forwarded to the target should anything call it.
  The drafter learns of every change through ``weight_sync.EVENTS`` (the plugin's AFTER hooks on all
  five updater paths, ``resume_memory_occupation`` included) and is marked dirty.
* Lazy requant: before each decode step the drafter is refreshed if dirty, once for however many
  updates arrived. A failed requant leaves ``drafter.ready`` False (then every step is K=0).
* K per decode batch: :meth:`SelfSpecMixin.round_k` (0 → the stock one-token step; K > 0 → the
  worker's shared-KV :meth:`speculative_round`).

Kept free of sglang so the tests can run it against fakes on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Scheduler-batch fields a speculative round may rebind (eagle_prepare_for_verify, target_verify);
# restored before the plain fallback step when a round raises.
ROUND_MUTATES = ("spec_info", "input_ids", "out_cache_loc", "forward_mode", "capture_hidden_mode",
                 "seq_lens", "seq_lens_cpu", "seq_lens_sum", "return_hidden_states")

TARGET_ONLY = (True, "er_verl: target weights updated; the self-drafter is requantized from them lazily.")


@dataclass
class DecodeStats:
    """Decode steps run, and how many of them replayed a CUDA graph (a K=0 step should, up to max bs)."""

    decode_steps: int = 0
    graph_steps: int = 0

    def count(self, result: Any) -> None:
        self.decode_steps += 1
        self.graph_steps += bool(getattr(result, "can_run_cuda_graph", False))


class SelfSpecMixin:
    """Needs ``self.target_worker`` (a TpModelWorker), ``self._draft_worker.drafter`` (a SelfDrafter) and
    ``self.decode_stats`` (a DecodeStats)."""

    @property
    def drafter(self):
        return self._draft_worker.drafter

    @property
    def speculation_ready(self) -> bool:
        """True when the drafter's weights are a good requant of the current target weights."""
        return self.drafter.ready and not self.drafter.is_dirty

    def refresh_drafter(self) -> bool:
        """Requantize the drafter now if a weight change is pending; returns ``speculation_ready``."""
        self.drafter.refresh(self.target_worker.model_runner.model)
        return self.speculation_ready

    def forward_batch_generation(self, batch: Any, on_publish=None):
        """Prefill: stock. Decode: refresh the drafter, pick K (:meth:`round_k`), then the stock K=0 step
        or one speculative round (:meth:`speculative_round`)."""
        self.on_batch(batch)
        if batch.forward_mode.is_extend() or batch.is_extend_in_batch:
            return super().forward_batch_generation(batch, on_publish)
        profiler = getattr(self, "profiler", None)
        if profiler is not None:
            profiler.begin(self.drafter.forward_steps, self.drafter.graph_steps)
        self.before_decode(batch)
        self.refresh_drafter()
        k = self.decided_k(batch)
        self.use_k(k)
        windows = getattr(self, "torch_windows", None)
        if windows is not None:
            windows.before(k, len(batch.seq_lens))
        if k > 0:
            saved = {name: getattr(batch, name, None) for name in ROUND_MUTATES}
            try:
                result = self.speculative_round(batch, k, on_publish)
            except Exception as exc:  # noqa: BLE001 - a drafter fault must not fail the rollout
                self.round_failed(exc)
                for name, value in saved.items():
                    setattr(batch, name, value)
                self.exact_lengths(batch)  # the plain step plans from host lengths
                k = 0
                self.use_k(0)
        if k == 0:
            # K=0 commits one token per request, so its new lengths are known before it runs: publish them
            # first. SGLang's overlap scheduler waits on the CPU for this publish before preparing the next
            # batch whenever the attention backend plans from host-side lengths (FlashInfer:
            # FutureMap.resolve_seq_lens_cpu); published after the step, batch n+1's CPU work could not
            # start until batch n had finished on the GPU. A round's lengths depend on its acceptance and
            # are published after its sampling.
            if on_publish is not None:
                on_publish(batch.seq_lens + 1)
            result = self.plain_step(batch)
            if result is None:
                result = super().forward_batch_generation(batch)
        self.decode_stats.count(result)
        self.after_decode(batch, k, result)
        if profiler is not None:
            profiler.end(k, getattr(result, "can_run_cuda_graph", False), self.drafter.forward_steps,
                         self.drafter.graph_steps)
        if windows is not None:
            windows.after()
        self.pending_lengths = None
        return result

    def decided_k(self, batch: Any) -> int:
        """K for this decode call: the one decided for this very batch at SGLang's resolve (``presync``, set by
        the worker's ``presync_k``), else :meth:`round_k`. Taken once either way."""
        pre, self.presync = getattr(self, "presync", None), None
        if pre is not None and pre[0] is batch:
            return pre[1]
        return self.round_k(batch)

    def exact_lengths(self, batch: Any) -> None:
        """Give ``batch`` exact host lengths where the resolve left a lower bound (``sync_free``); default: none."""

    def round_failed(self, exc: BaseException) -> None:
        """A speculative round raised: warn, and decode plainly until the drafter's next good requant
        (the next weight sync). The failed round published nothing and wrote only K/V slots at or past
        the committed length, which the plain step rewrites or never reads."""
        self.drafter.ready = False
        self.round_failures = getattr(self, "round_failures", 0) + 1
        logger.warning("er_verl: speculative round failed (%r); decoding plainly until the next weight sync",
                       exc, exc_info=True)
        print(f"er_verl[scheduler]: WARNING speculative round failed: {exc!r}; decoding plainly until the "
              "next weight sync", flush=True)

    # Overridden by the engine worker (worker.py); the defaults decode plainly.
    def on_batch(self, batch: Any) -> None:
        """Called for every batch before it runs."""

    def before_decode(self, batch: Any) -> None:
        """Called before each decode call picks its K."""

    def after_decode(self, batch: Any, k: int, result: Any) -> None:
        """Called after each decode call with the K it ran and its result."""

    def round_k(self, batch: Any) -> int:
        """Draft length for this decode batch (0: one plain target step)."""
        return 0

    def use_k(self, k: int) -> None:
        """Make the runtime state for K active."""

    def plain_step(self, batch: Any):
        """A K=0 step of our own, or None for the stock one (the default)."""
        return None

    def speculative_round(self, batch: Any, k: int, on_publish=None):
        raise NotImplementedError

    def update_weights_from_tensor(self, recv_req: Any):
        return self.target_worker.update_weights_from_tensor(recv_req)

    def update_weights_from_distributed(self, recv_req: Any):
        return self.target_worker.update_weights_from_distributed(recv_req)

    def update_weights_from_disk(self, recv_req: Any):
        return TARGET_ONLY

    def update_weights_from_ipc(self, recv_req: Any):
        return TARGET_ONLY
