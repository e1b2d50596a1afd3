"""Run under torchrun (gloo on CPU): exercises MegatronPolicy at TP x PP = world size.

Writes `result-tp<T>-pp<P>.pt` into --out: logprobs before/after one training step, the loss,
whether HF -> Megatron -> HF was bit-exact, and whether a checkpoint (weights and Adam's
state in HF layout) restored the exact post-step state. The pytest side
(tests/workloads/policy/megatron_policy_suite.py) compares TP=1 with TP=2 and with the tiny torch backend.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist


def random_hf_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic HF-layout weights for a Qwen2/Llama config (same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def rnd(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    state = {"model.embed_tokens.weight": rnd(v, h, scale=0.5), "model.norm.weight": 1 + rnd(h, scale=0.1)}
    if not cfg.get("tie_word_embeddings"):
        state["lm_head.weight"] = rnd(v, h, scale=0.3)
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        state |= {
            p + "input_layernorm.weight": 1 + rnd(h, scale=0.1),
            p + "post_attention_layernorm.weight": 1 + rnd(h, scale=0.1),
            p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
            p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
            p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
            p + "mlp.down_proj.weight": rnd(h, i),
        }
        if cfg.get("attention_bias"):
            state |= {p + "self_attn.q_proj.bias": rnd(h), p + "self_attn.k_proj.bias": rnd(kv),
                      p + "self_attn.v_proj.bias": rnd(kv)}
    return state


LEARNING_RATE = 1e-3


def ppo_settings():
    """The update both backends run on `fixed_batch`: two mini-batches of 2 and 1 samples,
    micro-batches of one sample (gradient accumulation), so the second step's ratio moves."""
    from kuberl.workloads.spec import AlgorithmSpec

    return AlgorithmSpec(group_size=2, global_batch_size=2, rollout_batch_size=4, micro_batch_size=1,
                         learning_rate=LEARNING_RATE, clip_eps_low=0.2, clip_eps_high=0.2)


def rollout_batch(vocab_size: int, behaviour: torch.Tensor):
    """`fixed_batch` as the update's [B, T] rollout batch (position 0 carries no target)."""
    from kuberl.workloads.rl.ppo import RolloutBatch

    ids, advantages, mask = fixed_batch(vocab_size)
    pad = torch.nn.functional.pad
    return RolloutBatch(ids=ids, valid=torch.ones_like(ids, dtype=torch.bool), mask=pad(mask, (1, 0)),
                        behaviour=pad(behaviour.detach(), (1, 0)), advantages=advantages,
                        weights=torch.ones(len(ids)), rewards=torch.zeros(len(ids)))


def fixed_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids [3, 12], per-sample advantages, and a response mask over the last 7 targets."""
    ids = torch.randint(3, vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    advantages = torch.tensor([1.0, -0.5, 0.25])
    mask = torch.zeros(3, 11)
    mask[:, 4:] = 1.0
    return ids, advantages, mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True,
                        help="HF layout: config.json (+ model.safetensors, else random weights)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pp", type=int, default=1, help="pipeline stages; TP = world size / pp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from kuberl.workloads.policy.megatron.optimizer_state import export_adam_state, load_adam_state
    from kuberl.workloads.policy.megatron.policy import MegatronPolicy, load_hf_dir
    from kuberl.workloads.rl.losses import policy_loss
    from kuberl.workloads.rl.ppo import ppo_update

    cfg, hf = load_hf_dir(args.model_dir)
    if hf is None:
        hf = random_hf_state(cfg, args.seed)
    pp = args.pp
    tp = dist.get_world_size() // pp
    policy = MegatronPolicy(cfg, tensor_parallel=tp, pipeline_parallel=pp, learning_rate=LEARNING_RATE, seed=args.seed)
    policy.load_hf_state(hf)
    ids, advantages, mask = fixed_batch(cfg["vocab_size"])
    before = policy.logprobs(ids, torch.ones_like(ids, dtype=torch.bool), 1.0)[:, 1:]

    def loss_fn(logprobs: torch.Tensor) -> torch.Tensor:
        return policy_loss(logprobs, advantages, mask, old_logprobs=before).loss

    exported = policy.export_hf_state()
    round_trip_exact = set(exported) == set(hf) and all(torch.equal(exported[k], hf[k]) for k in hf)
    # The trainer's update (rl.ppo), as the tiny backend runs it in the test.
    steps = [r.metrics for r in ppo_update(policy, rollout_batch(cfg["vocab_size"], before), ppo_settings())]
    with torch.no_grad():
        after = policy.token_logprobs(ids)
    out = Path(args.out)
    weights, adam = policy.export_hf_state(), export_adam_state(policy)  # what a checkpoint holds
    policy.train_step(ids, loss_fn)  # move away from the checkpoint...
    policy.load_hf_state(weights)  # ...and come back
    load_adam_state(policy, adam)
    again = export_adam_state(policy)
    step = again["step"]
    adam_exact = all(torch.equal(again[m][k], adam[m][k]) for m in ("exp_avg", "exp_avg_sq") for k in adam[m])
    with torch.no_grad():
        restored = policy.token_logprobs(ids)
    exported_after_step = policy.export_hf_state()  # a collective: every rank joins
    if policy.last_stage and policy.tp_rank == 0:  # the rank that holds the logprobs
        torch.save(
            {
                "ids": ids, "before": before, "after": after, "restored": restored, "steps": steps,
                "round_trip_exact": round_trip_exact, "restored_step": step, "adam_round_trip_exact": adam_exact,
                "exported_after_step": exported_after_step,
            },
            out / f"result-tp{tp}-pp{pp}.pt",
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
