"""``sglang.srt.plugins`` entry point: registers er_verl's hooks with SGLang's HookRegistry.

SGLang calls :func:`register` (zero arguments) from ``load_plugins()`` in every process it starts,
then applies the hooks. Installing er_verl must not change plain SGLang (verl's ``sglang`` backend, or
any other SGLang user), so hooks are registered only in processes of an efficient_sglang server: its
server actor sets ``ER_VERL_ENGINE=1`` in its own environment, which SGLang's schedulers inherit.
The self-drafter's hooks (worker classes, draft loader, shared KV pool) are added only where
``ER_VERL_SELF_DRAFT=1`` is set too (``server_args.self_draft_env``), i.e. when speculation is on.
Hook failures are only logged by SGLang, so :func:`assert_applied` checks that each reached its target.
"""

import logging
import os

logger = logging.getLogger(__name__)

ENGINE_ENV = "ER_VERL_ENGINE"
SELF_DRAFT_ENV = "ER_VERL_SELF_DRAFT"
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


def enabled() -> bool:
    """True in the processes of an efficient_sglang server (``ER_VERL_ENGINE=1``)."""
    return os.environ.get(ENGINE_ENV) == "1"


def self_draft_enabled() -> bool:
    """True where the self-drafter is to be built as well (``ER_VERL_SELF_DRAFT=1``)."""
    return enabled() and os.environ.get(SELF_DRAFT_ENV) == "1"


def _drafter_hooks() -> tuple:
    if not self_draft_enabled():
        return ()
    from er_verl.engine.worker import HOOKS  # imports most of sglang.srt: only where it is used

    return HOOKS


PLAIN_DECODE = "sglang.srt.managers.tp_worker.TpModelWorker.forward_batch_generation"


def register() -> None:
    """Register er_verl's hooks (efficient_sglang only): AFTER hooks on every path that changes target
    weights and, with the self-drafter on, its worker classes, draft loader and shared KV pool.

    Outside efficient_sglang, only an explicit ``ER_VERL_TIMELINE`` (``er-verl bench rollout``'s plain
    SGLang row) adds one hook: the plain decode calls' timeline, for comparison with er_verl's."""
    from er_verl.engine.profile import timeline_from_env

    if not enabled():
        timeline = timeline_from_env()
        if timeline is not None:
            from sglang.srt.plugins.hook_registry import HookRegistry, HookType

            HookRegistry.register(PLAIN_DECODE, timeline.after_plain_decode, HookType.AFTER)
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from er_verl.engine.faults import arm_stack_dump

    arm_stack_dump()
    for method, source in WEIGHT_PATHS.items():
        HookRegistry.register(f"{UPDATER}.{method}", _after_weight_change(source), HookType.AFTER)
    for target, hook, hook_type in _drafter_hooks():
        HookRegistry.register(target, hook, HookType[hook_type])


def hook_targets() -> list[str]:
    """Every target er_verl hooks in this process (the drafter's only with ``ER_VERL_SELF_DRAFT=1``)."""
    return [f"{UPDATER}.{method}" for method in WEIGHT_PATHS] + [target for target, _, _ in _drafter_hooks()]


def assert_applied() -> None:
    """Raise RuntimeError naming the first er_verl hook that SGLang did not apply."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    for target in hook_targets():
        if target not in HookRegistry._patched:
            raise RuntimeError(f"er_verl hook on {target} was not applied (see SGLang's plugin log).")


def enable_in_this_process() -> None:
    """Turn er_verl's hooks on here and in the SGLang processes this one starts, then check them.

    Called by the efficient_sglang server actor before verl builds ``ServerArgs``. SGLang loads plugins
    once per process; if that already happened (without the flag), the hooks are registered now.
    """
    import sglang.srt.plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    os.environ[ENGINE_ENV] = "1"
    sglang.srt.plugins.load_plugins()
    if any(target not in HookRegistry._patched for target in hook_targets()):
        register()
        HookRegistry.apply_hooks()
    assert_applied()
