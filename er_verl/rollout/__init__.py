"""verl side of er_verl: the ``efficient_sglang`` rollout backend (registry entries, server, adapter,
agent loop, metric mapping). Modules here import sglang only when verl loads the backend."""
