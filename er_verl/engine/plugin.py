"""``sglang.srt.plugins`` entry point: registers er_verl's hooks with SGLang's HookRegistry.

SGLang calls :func:`register` (zero arguments) from ``load_plugins()`` in every process it starts,
then applies the hooks. Hook failures are only logged by SGLang, so :func:`assert_applied` lets a
caller check that a hook reached its target.
"""

import logging

logger = logging.getLogger(__name__)

UPDATER = "sglang.srt.managers.scheduler_components.weight_updater.SchedulerWeightUpdaterManager"
WEIGHT_PATHS = {
    "update_weights_from_tensor": "tensor",
    "update_weights_from_ipc": "ipc",
    "update_weights_from_distributed": "distributed",
    "update_weights_from_disk": "disk",
    "resume_memory_occupation": "resume",
}


def _succeeded(result) -> bool:
    """SGLang's update outputs carry ``success``; resume returns an output without it (always ok)."""
    return bool(getattr(result, "success", True))


def _after_weight_change(source: str):
    def hook(result, *args, **kwargs):
        if _succeeded(result):
            from er_verl.engine.weight_sync import EVENTS

            EVENTS.notify(source)
        return result

    hook.__qualname__ = f"er_verl_after_{source}"
    return hook


def register() -> None:
    """Register the AFTER hooks on every path that changes target weights."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for method, source in WEIGHT_PATHS.items():
        HookRegistry.register(f"{UPDATER}.{method}", _after_weight_change(source), HookType.AFTER)


def assert_applied() -> None:
    """Raise RuntimeError naming the first er_verl hook that SGLang did not apply."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    for method in WEIGHT_PATHS:
        target = f"{UPDATER}.{method}"
        if target not in HookRegistry._patched:
            raise RuntimeError(f"er_verl hook on {target} was not applied (see SGLang's plugin log).")
