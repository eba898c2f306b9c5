import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from er_verl.rollout import patches
from er_verl.rollout.metrics import DECODE_STEPS, K_ROUNDS, REQUANT_MS, decode_steps, spec_extra_fields
from er_verl.engine.spec_round import DRAFTED_TAG, ROUNDS_TAG


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_a_patch_applies_once_after_its_module_is_imported_and_only_for_its_version(tmp_path, monkeypatch):
    _write(tmp_path / "lib" / "er_demo_target.py", "def f():\n    return 1\n")
    _write(tmp_path / "patches" / "verl_9_9_9" / "demo.py", """
        MODULE = "er_demo_target"
        def apply(module):
            if getattr(module, "patched", False):
                return False
            module.patched, module.f = True, lambda: 2
            return True
    """)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.delitem(sys.modules, "er_demo_target", raising=False)
    assert patches.install("1.0.0", root=tmp_path / "patches") == []
    assert patches.install("9.9.9", root=tmp_path / "patches") == ["verl_9_9_9.demo"]
    import er_demo_target

    assert er_demo_target.f() == 2
    hooks = [f for f in sys.meta_path if isinstance(f, patches._AfterImport)]
    assert all(h.module_name != "er_demo_target" for h in hooks)  # the hook was one-shot
    patches.install("9.9.9", root=tmp_path / "patches")  # module already imported: applied at once, refused
    assert er_demo_target.f() == 2


def test_the_plugin_patches_the_installed_verl_v1_trainer():
    """End to end in a fresh interpreter: ``import verl`` loads er_verl's entry point, which arranges the
    patch; importing the v1 trainer then wraps the real PPOTrainer._compute_metrics."""
    code = ("import verl.trainer.ppo.v1.trainer_base as tb; "
            "assert getattr(tb.PPOTrainer._compute_metrics, 'er_verl_wrapped', None) is not None")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "applied patch verl_0_9_1.v1_spec_metrics" in proc.stdout


def _patch_module():
    return patches.load(patches.folder_for("0.9.1") / "v1_spec_metrics.py")


def _fields(drafted, accepted, rounds, completion):
    meta = {DRAFTED_TAG: [drafted], ROUNDS_TAG: [rounds], "spec_num_correct_drafts": accepted,
            "completion_tokens": completion}
    return spec_extra_fields(meta, True)


def test_spec_metrics_aggregate_non_padding_samples():
    mod = _patch_module()
    rows = [_fields(12, 6, 4, 31), _fields(0, 0, 0, 20), _fields(99, 99, 1, 5)]  # the last one is padding
    out = mod.spec_metrics(rows, [True, True, False])
    assert out["rollout/spec_accept_rate"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["rollout/spec_accept_length"] == pytest.approx((1 + 6 / 4 + 0.0) / 2)
    assert out["rollout/er_verl/spec_on_fraction"] == pytest.approx(4 / ((31 - 1 - 6) + 19))
    assert out["rollout/er_verl/mean_draft_len"] == pytest.approx(3.0)
    # Over speculative rounds only: the sample that never speculated does not pull these down (verl's do).
    assert out["rollout/er_verl/accept_rate"] == pytest.approx(6 / 12)
    assert out["rollout/er_verl/accept_length"] == pytest.approx(1 + 6 / 4)
    none = mod.spec_metrics(rows[1:2], [True])
    assert none["rollout/spec_accept_rate"] == 0.0 and "rollout/er_verl/accept_rate" not in none
    assert out["rollout/er_verl/k_hist/k0"] == 1.0  # no K-rounds lists given: every step counts as plain
    assert mod.spec_metrics(rows[:1] + [{"other": 1}], [True, True]) == {}  # a sample without the fields
    assert mod.spec_metrics([], []) == {}


def test_k_histogram_and_requant_time():
    """Sample 1: 24 decode steps, of them rounds K=1 x1 and K=3 x3; sample 2: 19 steps, K=2 x2; the requant
    time is the largest carried (only samples of the first decode batch after it carry one)."""
    mod = _patch_module()
    rows = [_fields(10, 6, 4, 31), _fields(4, 0, 2, 20), _fields(99, 99, 1, 5)]  # the last one is padding
    rows[0].update({K_ROUNDS: [1, 0, 3], REQUANT_MS: 40.0})
    rows[1].update({K_ROUNDS: [0, 2], REQUANT_MS: 42.5})
    rows[2].update({K_ROUNDS: [0, 0, 0, 0, 9], REQUANT_MS: 99.0})
    out = mod.spec_metrics(rows, [True, True, False])
    steps = 24 + 19
    hist = {k: v for k, v in out.items() if "/k_hist/" in k}
    assert hist == pytest.approx({"rollout/er_verl/k_hist/k0": (steps - 6) / steps, "rollout/er_verl/k_hist/k1": 1 / steps,
                                  "rollout/er_verl/k_hist/k2": 2 / steps, "rollout/er_verl/k_hist/k3": 3 / steps})
    assert out["rollout/er_verl/requant_ms"] == 42.5
    rows[1].pop(REQUANT_MS), rows[0].pop(REQUANT_MS)
    assert "rollout/er_verl/requant_ms" not in mod.spec_metrics(rows, [True, True, False])


def test_decode_steps_never_fall_below_the_rounds():
    assert decode_steps(completion_tokens=31, accepted=6, rounds=4) == 24
    assert decode_steps(completion_tokens=10, accepted=9, rounds=4) == 4  # last round cut by the length limit
    assert DECODE_STEPS not in spec_extra_fields({DRAFTED_TAG: [3], ROUNDS_TAG: [1]}, True)


class _Trainer:
    def __init__(self, name):
        self.config = SimpleNamespace(actor_rollout_ref=SimpleNamespace(rollout=SimpleNamespace(name=name)))


class _Column:
    def __init__(self, rows):
        self.rows = rows

    def tolist(self):
        return self.rows


def test_wrapper_adds_metrics_for_efficient_sglang_only_and_never_raises(monkeypatch):
    import transfer_queue as tq

    mod = _patch_module()
    calls = []
    rows = [_fields(12, 6, 4, 31), _fields(6, 0, 2, 9)]
    monkeypatch.setattr(tq, "kv_batch_get", lambda **kw: calls.append(kw) or {"extra_fields": _Column(rows)})
    wrapped = mod.wrap(lambda self, batch, metrics, *rest: metrics.update({"training/global_step": 3}))
    batch = SimpleNamespace(tags=[{}, {}], keys=["a", "b"], partition_id="train")
    metrics = {}
    wrapped(_Trainer("efficient_sglang"), batch, metrics, {}, 3, 0)
    assert metrics["training/global_step"] == 3 and calls[0]["select_fields"] == ["extra_fields"]
    assert metrics["rollout/spec_accept_rate"] == pytest.approx(0.25)
    assert metrics["rollout/er_verl/mean_draft_len"] == pytest.approx(3.0)
    metrics = {}
    wrapped(_Trainer("sglang"), batch, metrics, {}, 3, 0)
    assert "rollout/spec_accept_rate" not in metrics and len(calls) == 1
    monkeypatch.setattr(tq, "kv_batch_get", lambda **kw: 1 / 0)
    metrics = {}
    wrapped(_Trainer("efficient_sglang"), batch, metrics, {}, 3, 0)  # a failing fetch only warns
    assert metrics == {"training/global_step": 3}


def test_apply_wraps_the_real_class_once(monkeypatch):
    import verl.trainer.ppo.v1.trainer_base as tb

    mod = _patch_module()
    original = getattr(tb.PPOTrainer._compute_metrics, "er_verl_wrapped", tb.PPOTrainer._compute_metrics)
    monkeypatch.setattr(tb.PPOTrainer, "_compute_metrics", original)
    assert mod.apply(tb) is True
    assert tb.PPOTrainer._compute_metrics.er_verl_wrapped is original
    assert mod.apply(tb) is False
