"""verl finds efficient_sglang by name in a fresh process, with no sglang import and no env change."""

import json
import os
import subprocess
import sys

PROBE = r"""
import json, os, sys
env_before = dict(os.environ)
import verl
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, get_rollout_class
from verl.workers.rollout.replica import RolloutReplicaRegistry
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
out = {
    "adapter_fqn": _ROLLOUT_REGISTRY.get(("efficient_sglang", "async")),
    "replica_registered": "efficient_sglang" in RolloutReplicaRegistry._registry,
    "agent_loop": _agent_loop_registry.get("efficient_single_turn_agent"),
    "sglang_imported_at_registration": any(m == "sglang" or m.startswith("sglang.") for m in sys.modules),
    "env_changed": sorted(k for k in set(os.environ) | set(env_before) if os.environ.get(k) != env_before.get(k)),
}
if "--resolve" in sys.argv:
    out["adapter_class"] = get_rollout_class("efficient_sglang", "async").__name__
    out["replica_class"] = RolloutReplicaRegistry.get("efficient_sglang").__name__
    from verl.workers.rollout.replica import get_rollout_replica_class
    out["via_get_rollout_replica_class"] = get_rollout_replica_class("efficient_sglang").__name__
print("RESULT" + json.dumps(out))
"""


def run_probe(*args, env=None):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_registration_in_fresh_process_is_side_effect_free():
    out = run_probe()
    assert out["adapter_fqn"] == "er_verl.rollout.adapter.EfficientServerAdapter"
    assert out["replica_registered"] is True
    assert out["agent_loop"] == {"_target_": "er_verl.rollout.agent_loop.EfficientSingleTurnAgentLoop"}
    assert out["sglang_imported_at_registration"] is False
    # verl, ray and torch set a few variables on import by themselves; the plugin must add none.
    baseline = run_probe(env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert baseline["adapter_fqn"] is None  # the baseline really ran without the plugin
    assert out["env_changed"] == baseline["env_changed"]


def test_names_resolve_to_our_classes():
    out = run_probe("--resolve")
    assert out["adapter_class"] == "EfficientServerAdapter"
    assert out["replica_class"] == "EfficientSGLangReplica"
    assert out["via_get_rollout_replica_class"] == "EfficientSGLangReplica"
