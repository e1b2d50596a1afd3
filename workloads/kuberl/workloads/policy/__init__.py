"""Trainable policies: the tiny pure-torch model and the megatron-core backend."""
