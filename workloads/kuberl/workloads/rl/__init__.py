"""The RL algorithm as pure functions: advantages, losses, sampling, curriculum."""
