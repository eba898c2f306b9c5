"""The ``sglang.srt.plugins`` entry point: discovered, inert for plain SGLang, hooks the real class."""

import json
import subprocess
import sys

PROBE = r"""
import json, os, sys
from importlib.metadata import entry_points
eps = [ep.value for ep in entry_points(group="sglang.srt.plugins") if ep.name == "er_verl"]
import sglang.srt.plugins as plugins
plugins.load_plugins()
from sglang.srt.plugins.hook_registry import HookRegistry
from sglang.srt.managers.scheduler_components.weight_updater import SchedulerWeightUpdaterManager as U
from er_verl.engine.plugin import PLAIN_DECODE, UPDATER, WEIGHT_PATHS
from er_verl.engine.weight_sync import EVENTS
patched = sorted(m for m in WEIGHT_PATHS if f"{UPDATER}.{m}" in HookRegistry._patched)
worker_replaced = "sglang.srt.speculative.standalone_worker_v2.StandaloneWorkerV2" in HookRegistry._patched
seen = []
EVENTS.subscribe(seen.append)

class Ok:  # what SGLang's update outputs look like
    success = True

class Failed:
    success = False

class FakeWorker:
    def __init__(self, result): self.result = result
    def update_weights_from_tensor(self, req): return (self.result, "msg")

class Req:
    disable_draft_model = False
    flush_cache = False

class Group:  # torch.distributed.barrier(group=...) on a fake group
    pass

import torch.distributed as dist
dist.barrier = lambda group=None: None
for ok in (True, False):
    mgr = U(tp_worker=FakeWorker(ok), draft_worker=None, tp_cpu_group=Group(), memory_saver_adapter=None,
            flush_cache=lambda **k: True, is_fully_idle=lambda: True)
    out = mgr.update_weights_from_tensor(Req())
print("RESULT" + json.dumps({"entry_points": eps, "patched": patched, "events": seen, "counts": EVENTS.counts,
                             "worker_replaced": worker_replaced,
                             "plain_decode": PLAIN_DECODE in HookRegistry._patched}))
"""


def probe(engine_flag, timeline=None):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("ER_VERL_ENGINE", "ER_VERL_TIMELINE")}
    if engine_flag:
        env["ER_VERL_ENGINE"] = "1"
    if timeline:
        env["ER_VERL_TIMELINE"] = timeline
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_hooks_apply_to_installed_updater_and_fire_only_on_success():
    out = probe(engine_flag=True)
    assert out["entry_points"] == ["er_verl.engine.plugin:register"]
    assert out["patched"] == sorted(
        ["update_weights_from_tensor", "update_weights_from_ipc", "update_weights_from_distributed",
         "update_weights_from_disk", "resume_memory_occupation"]
    )
    assert out["events"] == ["tensor"]  # the successful update fired, the failed one did not
    assert out["counts"]["tensor"] == 1
    assert out["worker_replaced"] is False  # the self-drafter's hooks need ER_VERL_SELF_DRAFT=1 as well


def test_plain_sglang_is_untouched_without_the_engine_flag():
    out = probe(engine_flag=False)
    assert out["entry_points"] == ["er_verl.engine.plugin:register"]
    assert out["patched"] == []
    assert out["events"] == []
    assert out["worker_replaced"] is False
    assert out["plain_decode"] is False


def test_a_timeline_path_alone_hooks_only_plain_decode(tmp_path):
    out = probe(engine_flag=False, timeline=str(tmp_path / "tl.jsonl"))
    assert out["plain_decode"] is True  # bench rollout's plain row: its decode calls' timeline
    assert out["patched"] == [] and out["events"] == [] and out["worker_replaced"] is False
