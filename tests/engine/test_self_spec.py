"""SelfSpecMixin with fakes: weight updates reach the target only; decode steps refresh the drafter first."""

from torch import nn

from er_verl.engine.drafter import SelfDrafter
from er_verl.engine.self_spec import TARGET_ONLY, DecodeStats, SelfSpecMixin
from er_verl.engine.sharing import SharingPlan


class Mode:
    def __init__(self, extend: bool):
        self.extend = extend

    def is_extend(self) -> bool:
        return self.extend


class Batch:
    def __init__(self, extend: bool, extend_in_batch: bool = False):
        self.forward_mode = Mode(extend)
        self.is_extend_in_batch = extend_in_batch


class StockWorker:
    """What StandaloneWorkerV2 provides below the mixin: records the batches it ran."""

    def forward_batch_generation(self, batch, on_publish=None):
        self.log.append(("forward", batch.forward_mode.extend, self.drafter.is_dirty))
        return type("Result", (), {"can_run_cuda_graph": len(self.log) % 2 == 0})()

    def update_weights_from_tensor(self, recv_req):  # stock: would load into the draft too
        raise AssertionError("stock routing used")


class Worker(SelfSpecMixin, StockWorker):
    def __init__(self):
        self.log = []
        self.decode_stats = DecodeStats()
        log = self.log

        class Target:
            model_runner = type("R", (), {"model": nn.Module()})()

            def update_weights_from_tensor(self, req):
                log.append(("target", "tensor", req))
                return True, "ok"

            def update_weights_from_distributed(self, req):
                log.append(("target", "distributed", req))
                return True, "ok"

        self.target_worker = Target()
        drafter = SelfDrafter(nn.Module(), "int4", SharingPlan())
        drafter.requantize_ = lambda target_model: log.append(("requant",)) or 0.001
        self._draft_worker = type("D", (), {"drafter": drafter})()


def test_tensor_and_distributed_updates_go_to_the_target_only():
    worker = Worker()
    assert worker.update_weights_from_tensor("req") == (True, "ok")
    assert worker.update_weights_from_distributed("req2") == (True, "ok")
    assert worker.log == [("target", "tensor", "req"), ("target", "distributed", "req2")]


def test_disk_and_ipc_leave_the_already_updated_target_alone():
    worker = Worker()
    assert worker.update_weights_from_disk("req") == TARGET_ONLY
    assert worker.update_weights_from_ipc("req") == TARGET_ONLY
    assert worker.log == []


def test_decode_refreshes_a_dirty_drafter_before_the_step_and_prefill_does_not():
    worker = Worker()
    worker.forward_batch_generation(Batch(extend=True))
    assert worker.log == [("forward", True, True)]  # prefill: the drafter may stay dirty
    worker.forward_batch_generation(Batch(extend=False))
    worker.forward_batch_generation(Batch(extend=False))
    assert worker.log[1:] == [("requant",), ("forward", False, False), ("forward", False, False)]
    assert worker.decode_stats == DecodeStats(decode_steps=2, graph_steps=1)  # prefills are not counted


def test_mixed_extend_batch_is_not_a_decode_step():
    worker = Worker()
    worker.forward_batch_generation(Batch(extend=False, extend_in_batch=True))
    assert worker.log == [("forward", False, True)]


def test_speculation_ready_tracks_the_drafter():
    worker = Worker()
    assert not worker.speculation_ready
    assert worker.refresh_drafter() is True
    worker.drafter.mark_dirty("tensor")
    assert not worker.speculation_ready


def test_k0_uses_the_plain_step_when_it_returns_a_result_else_the_stock_step():
    w = Worker()
    w.drafter.refresh(w.target_worker.model_runner.model)
    plain = type("Plain", (), {"can_run_cuda_graph": True})()
    w.plain_step = lambda batch, on_publish=None: w.log.append(("plain",)) or plain
    assert w.forward_batch_generation(Batch(extend=False)) is plain
    assert w.log[-1] == ("plain",) and not any(e[0] == "forward" for e in w.log)
    w.plain_step = lambda batch, on_publish=None: None  # graphs cannot run this batch: stock K=0 step
    w.forward_batch_generation(Batch(extend=False))
    assert w.log[-1] == ("forward", False, False)


def test_k0_publishes_the_new_lengths_before_its_step_runs():
    """The overlap scheduler's next batch waits for the publish; a K=0 step's lengths are seq_lens + 1."""
    import torch

    w = Worker()
    w.drafter.refresh(w.target_worker.model_runner.model)
    published = []
    batch = Batch(extend=False)
    batch.seq_lens = torch.tensor([5, 9])
    w.plain_step = lambda b: w.log.append(("plain", len(published))) or type("R", (), {})()
    w.forward_batch_generation(batch, on_publish=lambda lens: published.append(lens.tolist()))
    assert published == [[6, 10]] and w.log[-1] == ("plain", 1)  # published once, before the step
    w.plain_step = lambda b: None  # the stock K=0 step must not publish a second time
    w.forward_batch_generation(batch, on_publish=lambda lens: published.append(lens.tolist()))
    assert published == [[6, 10], [6, 10]] and w.log[-1] == ("forward", False, False)


def test_a_round_publishes_its_own_lengths_and_a_failed_one_falls_back_to_an_early_k0_publish():
    import torch

    w = Worker()
    w.drafter.refresh(w.target_worker.model_runner.model)
    w.round_k = lambda batch: 2
    published = []
    batch = Batch(extend=False)
    batch.seq_lens = torch.tensor([4])

    def round_ok(b, k, on_publish=None):
        on_publish(b.seq_lens + 3)  # acceptance-dependent: the round publishes after sampling
        return type("R", (), {})()

    w.speculative_round = round_ok
    w.forward_batch_generation(batch, on_publish=lambda lens: published.append(lens.tolist()))
    assert published == [[7]]

    def round_raises(b, k, on_publish=None):
        b.seq_lens = torch.tensor([99])  # rebinds the batch, then fails before publishing
        raise RuntimeError("drafter fault")

    w.speculative_round = round_raises
    planned = []
    w.plain_step = lambda b: planned.append(list(b.seq_lens_cpu)) or type("R", (), {})()
    # sync_free: the resolve left a lower bound on the host; the plain step that replaces the round must plan
    # from the exact lengths (exact_lengths), not from the bound restored with the batch's fields
    batch.seq_lens_cpu = [3]
    w.exact_lengths = lambda b: setattr(b, "seq_lens_cpu", [4])
    w.forward_batch_generation(batch, on_publish=lambda lens: published.append(lens.tolist()))
    assert published == [[7], [5]]  # the restored lengths + 1
    assert planned == [[4]]
