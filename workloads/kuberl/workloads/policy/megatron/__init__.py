"""The megatron-core policy: HF <-> Megatron conversion, CPU shims, training."""
