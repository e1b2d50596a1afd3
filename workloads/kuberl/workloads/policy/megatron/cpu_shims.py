"""Shims that let megatron-core 0.16 run on a CPU-only machine (gloo). Used only on CPU.

megatron-core assumes CUDA in a few places that matter for us:
* `torch.cuda.current_device()` is called while building layers and RNG trackers;
* `torch.cuda.synchronize()` is called by megatron's utilities (timers, checkpointing);
* the tensor-parallel RNG tracker forks CUDA RNG state unless asked for the inference
  tracker (`model_parallel_cuda_manual_seed(..., inference_rng_tracker=True)`);
* the pipeline schedules allocate their token counter with `device="cuda"`.
Nothing here changes numerics; it only reroutes device queries to the CPU.
"""

from __future__ import annotations

import types

import torch

_installed = False


class _CpuTorch(types.ModuleType):
    """`torch` as seen by megatron's schedules module: tensors asked for on "cuda" land on the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        return torch.zeros(*args, device="cpu" if device == "cuda" else device, **kwargs)


def install_cpu_shims() -> None:
    """Patch the CUDA device queries megatron-core makes; idempotent; no-op when CUDA exists."""
    global _installed
    if _installed or torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]
    from megatron.core.pipeline_parallel import schedules

    schedules.torch = _CpuTorch()  # only that module's view of torch changes
    _installed = True


def seed_model_parallel_rng(seed: int) -> None:
    """Seed megatron's tensor-parallel RNG tracker in a way that does not touch CUDA."""
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(seed, inference_rng_tracker=not torch.cuda.is_available())
