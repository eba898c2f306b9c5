"""``verl.plugins`` entry point: makes ``rollout.name=efficient_sglang`` resolvable.

verl imports every ``verl.plugins`` entry point on ``import verl`` (``verl/__init__.py``), so this
module runs in every process verl starts: the driver, trainer workers, checkpoint-engine workers and
agent-loop workers. It only writes two registry entries and the agent-loop registration, and arranges the
version-gated verl patches of ``patches/`` (applied when their module is imported); it imports no
sglang and mutates no environment (verl's own ``_load_sglang`` does both, lazily, when the backend is
first used). verl logs plugin import errors at DEBUG only, so failures here are logged loudly.
"""

import logging

from er_verl import BACKEND_NAME

logger = logging.getLogger(__name__)

ADAPTER_FQN = "er_verl.rollout.adapter.EfficientServerAdapter"


def _load_replica():
    """Lazy loader for verl's RolloutReplicaRegistry (runs when the backend is first used)."""
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    RolloutReplicaRegistry.get("sglang")  # verl's own sglang import preparation, done once
    from er_verl.rollout.server import EfficientSGLangReplica

    return EfficientSGLangReplica


def register() -> None:
    """Register the backend in verl's two name lookups and the uid-forwarding agent loop."""
    from verl.workers.rollout import base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    base._ROLLOUT_REGISTRY[(BACKEND_NAME, "async")] = ADAPTER_FQN
    RolloutReplicaRegistry.register(BACKEND_NAME, _load_replica)
    _install_patches()
    try:
        import er_verl.rollout.agent_loop  # noqa: F401  (registers efficient_single_turn_agent)
    except ImportError:
        logger.warning(
            "er_verl: the efficient_single_turn_agent loop could not be registered (verl's agent loop does "
            "not import here); the backend still works, group ids fall back to prompt hashes.",
            exc_info=True,
        )


def _install_patches() -> None:
    """verl patches for the installed version (``patches/verl_<version>/``), applied when their module loads."""
    from importlib.metadata import version

    from er_verl.rollout.patches import install

    try:
        install(version("verl"))
    except Exception:  # noqa: BLE001 - without its patches verl still runs (e.g. no spec metrics in v1)
        logger.warning("er_verl: installing verl patches failed", exc_info=True)


try:
    register()
except Exception:  # pragma: no cover - verl would swallow this at DEBUG
    logger.exception("er_verl: registering the %s rollout backend failed", BACKEND_NAME)
    raise
