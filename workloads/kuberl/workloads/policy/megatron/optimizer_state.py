"""The megatron trainer's AdamW state in HF layout, so a checkpoint fits a gang of any shape.

Adam's moments are elementwise, shaped like the parameters: they are gathered and renamed
exactly as the weights are (`MegatronPolicy.gather_hf`) and sliced back for whatever
tensor, pipeline and data parallel sizes the resuming gang has (`MegatronPolicy.slice_hf`).
A checkpoint written at TP=2 therefore resumes at TP=1 or DP=2 with the same next steps.

Why not megatron's ``dist_checkpointing``: its torch_dist format reads the checkpoint's
metadata with ``pickle.load``, so whoever can write the checkpoint prefix could run code
in the trainer; the checkpoint store loads only tensors and plain types
(`trainer.checkpoints`). What this costs: rank 0 holds the whole state while it saves.
"""

from __future__ import annotations

from typing import Any

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def _local_moment(policy, key: str) -> dict[str, torch.Tensor]:
    params = dict(policy.core.named_parameters())
    own = {k: v for k, v in policy.core.state_dict().items() if not k.endswith("_extra_state")}
    out = {}
    for name, tensor in own.items():
        state = policy.optimizer.state.get(params[name]) if name in params else None
        out[name] = state[key].detach() if state else torch.zeros_like(tensor)
    return out


def export_adam_state(policy) -> dict[str, Any]:
    """The optimizer's state in HF layout. A collective over the model-parallel group."""
    steps = [float(s["step"]) for s in policy.optimizer.state.values() if "step" in s]
    # Every parameter steps together (data parallel ranks fill missing gradients with zeros).
    saved: dict[str, Any] = {"step": max(steps, default=0.0),
                             "hyper": {k: v for k, v in policy.optimizer.param_groups[0].items() if k != "params"}}
    for key in MOMENTS:
        saved[key] = {k: v.cpu() for k, v in policy.gather_hf(_local_moment(policy, key)).items()}
    return saved


def load_adam_state(policy, saved: dict[str, Any]) -> None:
    """This rank's slice of ``saved`` (from `export_adam_state`, by a gang of any shape) into its optimizer."""
    opt = policy.optimizer
    for group in opt.param_groups:
        group.update(saved["hyper"])
    opt.state.clear()
    if not saved["step"]:
        return  # saved before the first step: a fresh optimizer
    moments = {key: policy.slice_hf(saved[key]) for key in MOMENTS}
    for name, param in policy.core.named_parameters():
        opt.state[param] = {"step": torch.tensor(saved["step"], dtype=torch.float32),
                            **{key: moments[key][name].to(param.device, param.dtype) for key in MOMENTS}}
