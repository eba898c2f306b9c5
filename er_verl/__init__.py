"""er_verl: self-speculative SGLang rollouts for verl.

Select it in any verl recipe with ``actor_rollout_ref.rollout.name=efficient_sglang``. Importing this
package is cheap: it imports neither sglang nor verl.
"""

__version__ = "0.1.0"
BACKEND_NAME = "efficient_sglang"
