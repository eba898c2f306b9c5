"""The self-drafter inside a real sglang.Engine (CUDA only): a tiny random Qwen2 with tied embeddings.

The drafter lives in SGLang's scheduler process. With ``ER_VERL_DRAFTER_REPORT`` set it appends one
JSON line per requant (``er_verl/engine/checks.py``): each int4 layer read back through its own Marlin
GEMM vs RTN(target weight), shared-tensor storage, KV-pool identity, buffer addresses, a checksum of
the target's weights. These tests drive the engine and read that file; a failure prints the line.

The tests share one engine and run in file order: launch → tensor update → 100 release/resume cycles.
The first engine boot on a fresh host JIT-compiles kernels (minutes).
"""

import json
import os

import pytest
import torch

from engine_env import environ

from er_verl.config import EfficientConfig
from er_verl.engine.server_args import self_draft_env, self_draft_server_args

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# flashinfer for both engines: the GPU host's sglang-kernel has no FA3, and the capacities are compared.
# Small decode graphs and no prefill graphs: on the H200 (2026-11-25) the default capture (decode bs up to
# 256, prefill graphs for 58 token counts) of two engines on a fresh host overran a 330 s budget.
ENGINE_KW = dict(
    mem_fraction_static=0.3, enable_memory_saver=True, enable_weights_cpu_backup=True, log_level="error",
    attention_backend="flashinfer", cuda_graph_max_bs_decode=8, disable_prefill_cuda_graph=True,
)
NUM_LINEARS = 2 * 4  # tiny: 2 layers × (qkv, o, gate_up, down)
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 2  # layers × (K, V) × kv heads × head dim × bf16
CAPACITY_SLACK_BYTES = 64 << 20  # allocator granularity of small tensors made before the KV profile


def launch(model_path, **extra):
    import sglang

    return sglang.Engine(model_path=model_path, **{**ENGINE_KW, **extra})


@pytest.fixture(scope="module")
def plain_capacity(model_path):
    """max_total_num_tokens of plain SGLang at the same settings (run first: no er_verl hooks)."""
    with environ(ER_VERL_ENGINE=None):
        engine = launch(model_path)
        try:
            return engine.get_server_info()["max_total_num_tokens"]
        finally:
            engine.shutdown()


class Drafted:
    def __init__(self, engine, report: str):
        self.engine, self.report, self.seen = engine, report, 0

    def events(self) -> list[dict]:
        with open(self.report) as f:
            return [json.loads(line) for line in f if line.strip()]

    def new_events(self) -> list[dict]:
        events = self.events()
        new, self.seen = events[self.seen:], len(events)
        return new

    def decode_a_few_tokens(self) -> None:
        """A decode step is where the lazy requant happens."""
        self.engine.generate(input_ids=[[5, 6, 7, 8]], sampling_params={"max_new_tokens": 4, "ignore_eos": True})


@pytest.fixture(scope="module")
def drafted(model_path, plain_capacity, tmp_path_factory):
    report = str(tmp_path_factory.mktemp("report") / "drafter.jsonl")
    args = self_draft_server_args(EfficientConfig(max_draft_len=3), model_path)
    with environ(ER_VERL_ENGINE="1", ER_VERL_DRAFTER_REPORT=report, **self_draft_env()):
        engine = launch(model_path, **args)
    try:
        yield Drafted(engine, report)
    finally:
        engine.shutdown()


def show(event: dict) -> str:
    return json.dumps({k: v for k, v in event.items() if k != "buffer_ptrs"}, indent=1)


def assert_exact_and_shared(event: dict) -> None:
    assert not event["errors"], f"checks raised inside the engine:\n{show(event)}"
    assert event["ok"], f"requant failed:\n{show(event)}"
    rtn = event["rtn"]
    assert rtn["layers_checked"] == NUM_LINEARS and rtn["buffers_mismatched"] == [], (
        f"drafter Marlin buffers != SGLang's load path for RTN(target weight): {rtn['buffers_mismatched']}\n{show(event)}"
    )
    assert rtn["mismatched"] == [], (
        f"drafter weights read back through the Marlin GEMM on identity rows != dequant(RTN(target weight)) for "
        f"{rtn['mismatched']}, max |diff| {rtn['max_abs_diff']} (buffers equal SGLang's: a kernel-arithmetic "
        f"difference, not a requant bug):\n{show(event)}"
    )
    assert event["sharing"]["not_shared"] == [] and event["sharing"]["num_shared"] > 0, (
        f"drafter tensors with the target's name and shape but other storage:\n{show(event)}"
    )
    kv = event["kv"]
    assert kv["kv_pool_shared"] and kv["req_to_token_shared"] and kv["allocator_shared"], f"pools:\n{show(event)}"


def random_weights(model_path: str, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Fresh random HF weights of the tiny model (tied lm_head appears once, as the embedding)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), torch_dtype=torch.bfloat16)
    return [(name, p.detach().clone()) for name, p in model.named_parameters()]


def checksum(named: list[tuple[str, torch.Tensor]]) -> float:
    return float(sum(t.float().abs().sum() for _, t in named))


def test_drafter_is_built_at_launch_as_rtn_of_the_target_sharing_everything_else(drafted):
    events = drafted.new_events()
    assert [e["sources"] for e in events] == [["build"]], [show(e) for e in events]
    assert_exact_and_shared(events[0])
    assert events[0]["kind"] == "int4" and len(events[0]["buffer_ptrs"]) >= 2 * NUM_LINEARS  # qweight + sz (decode GEMM)
    ratio = events[0]["drafter_bytes"] / events[0]["target_weight_bytes"]
    print(f"drafter bytes {events[0]['drafter_bytes']} / target weight bytes {events[0]['target_weight_bytes']} = {ratio:.3f}")
    assert 0 < ratio < 0.5, "the drafter owns too much: a full-precision copy?"


def test_token_capacity_equals_plain_sglang(drafted, plain_capacity):
    ours = drafted.engine.get_server_info()["max_total_num_tokens"]
    slack = CAPACITY_SLACK_BYTES // KV_BYTES_PER_TOKEN
    print(f"max_total_num_tokens: plain {plain_capacity}, self-draft {ours} (slack {slack} tokens)")
    assert abs(ours - plain_capacity) <= slack, (
        f"plain SGLang has {plain_capacity} KV tokens, the self-draft engine {ours}: a draft KV pool or "
        "draft per-token scaling (speculative_draft_model_path set?) would show as roughly half"
    )


def test_tensor_update_reaches_the_target_and_the_drafter_is_requantized_in_place(drafted, model_path):
    build = drafted.events()[0]
    fresh = random_weights(model_path, seed=123)
    success, message = drafted.engine.update_weights_from_tensor(fresh)
    assert success, message
    assert drafted.new_events() == [], "requant must be lazy (before the next decode step), not at the update"
    drafted.decode_a_few_tokens()
    events = drafted.new_events()
    assert [e["sources"] for e in events] == [["tensor"]], [show(e) for e in events]
    assert_exact_and_shared(events[0])
    assert events[0]["buffer_ptrs"] == build["buffer_ptrs"], "drafter buffers moved: captured graphs would break"
    want = checksum(fresh)
    assert abs(events[0]["target_checksum"] - want) <= 1e-4 * want, (
        f"target weights after the update sum to {events[0]['target_checksum']}, the pushed ones to {want}"
    )


def test_disk_update_requantizes_the_drafter_from_the_reloaded_checkpoint(drafted, model_path):
    """update_weights_from_disk (the checkpoint the engine started from, after the random tensor update)."""
    before = drafted.events()[-1]
    result = drafted.engine.update_weights_from_disk(model_path)
    success = result[0] if isinstance(result, tuple) else result.get("success", False)
    assert success, result
    drafted.decode_a_few_tokens()
    events = drafted.new_events()
    assert [e["sources"] for e in events] == [["disk"]], [show(e) for e in events]
    assert_exact_and_shared(events[0])
    assert events[0]["buffer_ptrs"] == before["buffer_ptrs"], "drafter buffers moved: captured graphs would break"
    assert events[0]["target_checksum"] == pytest.approx(drafted.events()[0]["target_checksum"], rel=1e-4), (
        "after reloading the launch checkpoint the target should sum to what it did at build"
    )


CYCLES = 100


def test_hundred_release_resume_cycles_then_one_lazy_requant_and_no_memory_growth(drafted):
    """100 release/resume cycles (verl's sleep/wake-up), then one lazy requant: exact, in place, and the
    device's used memory after the last resume is within 32 MiB of the first (cudaMemGetInfo sees the
    scheduler process)."""
    before = drafted.events()[-1]
    used = []
    for cycle in range(CYCLES):
        drafted.engine.release_memory_occupation()
        drafted.engine.resume_memory_occupation()
        if cycle in (0, CYCLES - 1):
            free, total = torch.cuda.mem_get_info()
            used.append(total - free)
    growth = used[-1] - used[0]
    print(f"device memory used after resume 1: {used[0] / 2**20:.0f} MiB, after resume {CYCLES}: "
          f"{used[-1] / 2**20:.0f} MiB (growth {growth / 2**20:.1f} MiB)")
    assert growth <= 32 << 20, f"GPU memory grew by {growth / 2**20:.1f} MiB over {CYCLES} release/resume cycles"
    drafted.decode_a_few_tokens()
    events = drafted.new_events()
    assert len(events) == 1 and events[0]["sources"] == ["resume"] * CYCLES, [show(e) for e in events]
    assert_exact_and_shared(events[0])
    assert events[0]["buffer_ptrs"] == before["buffer_ptrs"], "drafter buffers moved across release/resume"
    assert events[0]["target_checksum"] == pytest.approx(before["target_checksum"], rel=1e-6), (
        "target weights changed across release/resume (enable_weights_cpu_backup should restore them)"
    )
    steps, graphs = events[0]["decode_steps"], events[0]["graph_steps"]
    assert steps > 0 and graphs == steps, f"{steps} K=0 decode steps so far, only {graphs} replayed a CUDA graph"


def test_fp8_drafter_builds_in_place_and_shares(model_path, tmp_path):
    report = str(tmp_path / "fp8.jsonl")
    args = self_draft_server_args(EfficientConfig(drafter="fp8", max_draft_len=2), model_path)
    with environ(ER_VERL_ENGINE="1", ER_VERL_DRAFTER_REPORT=report, **self_draft_env()):
        engine = launch(model_path, **args)
    try:
        drafted = Drafted(engine, report)
        engine.update_weights_from_tensor(random_weights(model_path, seed=7))
        drafted.decode_a_few_tokens()
        events = drafted.new_events()
        assert [e["sources"] for e in events] == [["build"], ["tensor"]], [show(e) for e in events]
        for event in events:
            assert event["kind"] == "fp8"
            assert_exact_and_shared(event)
        assert events[0]["buffer_ptrs"] == events[1]["buffer_ptrs"]
    finally:
        engine.shutdown()
