"""The megatron-core policy backend: GPTModel from an HF config, TP and PP via parallel_state.

One instance per rank, inside an initialised torch.distributed process group (torchrun;
gloo on CPU, NCCL on GPU). Weights come in and go out in HF layout
(`kuberl.workloads.megatron_convert`), so the rollout engines and the tiny torch backend
load exactly what this trainer publishes. Per-token logprobs use megatron's
vocab-parallel cross entropy: no rank ever materialises the full vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from kuberl.workloads.policy.megatron.convert import (
    HFShape,
    check_parallelism,
    hf_to_megatron,
    megatron_to_hf,
    padded_vocab,
    param_to_hf,
)
from kuberl.workloads.policy.megatron.cpu_shims import (
    install_cpu_shims,
    seed_model_parallel_rng,
)

LossFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps per-token logprobs [batch, seq-1] of the current policy to a scalar loss."""


def transformer_config(shape: HFShape, hf_config: dict[str, Any], *, tp: int, pp: int, dtype: torch.dtype):
    """megatron TransformerConfig equivalent to an HF Llama/Qwen2 config."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_gpu = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_heads,
        num_query_groups=shape.num_kv_heads,
        kv_channels=shape.head_dim,
        ffn_hidden_size=shape.intermediate_size,
        normalization="RMSNorm",
        layernorm_epsilon=float(hf_config.get("rms_norm_eps", 1e-6)),
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=not on_gpu,
        # Fused kernels exist only for CUDA; on CPU the unfused paths are the only ones.
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        masked_softmax_fusion=on_gpu,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )


def load_hf_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """config.json and the *.safetensors shards of an HF-layout directory (None when absent)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        return config, None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    return config, state


class MegatronPolicy:
    """A megatron-core GPTModel with the HF weight interface and the kuberl training step."""

    def __init__(
        self,
        hf_config: dict[str, Any],
        *,
        tensor_parallel: int = 1,
        pipeline_parallel: int = 1,
        dtype: torch.dtype = torch.float32,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        seed: int = 0,
    ):
        if not dist.is_initialized():
            raise RuntimeError("MegatronPolicy needs torch.distributed initialised (run under torchrun)")
        from megatron.core import parallel_state
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
        from megatron.core.models.gpt.gpt_model import GPTModel

        install_cpu_shims()
        self.hf_config = dict(hf_config)
        self.shape = HFShape.from_config(hf_config)
        check_parallelism(self.shape, tensor_parallel, pipeline_parallel)
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                                     pipeline_model_parallel_size=pipeline_parallel)
        seed_model_parallel_rng(seed)
        self.tp, self.pp = tensor_parallel, pipeline_parallel
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        self.pp_group = parallel_state.get_pipeline_model_parallel_group()
        self.mp_group = parallel_state.get_model_parallel_group()
        self.dp = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_group = parallel_state.get_data_parallel_group()
        self.first_stage = parallel_state.is_pipeline_first_stage()
        self.last_stage = parallel_state.is_pipeline_last_stage()
        self.device = torch.device("cuda",
                                   torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.vocab = padded_vocab(self.shape.vocab_size, tensor_parallel)
        self.config = transformer_config(self.shape, hf_config, tp=tensor_parallel, pp=pipeline_parallel, dtype=dtype)
        model = GPTModel(
            config=self.config,
            transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
            vocab_size=self.vocab,
            max_sequence_length=int(hf_config.get("max_position_embeddings", 4096)),
            position_embedding_type="rope",
            rotary_base=int(hf_config.get("rope_theta", 10000)),
            share_embeddings_and_output_weights=self.shape.tied_embeddings,
            pre_process=self.first_stage,
            post_process=self.last_stage,
        ).to(self.device)
        self.core = model
        if dtype in (torch.bfloat16, torch.float16):
            from megatron.core.transformer.module import Float16Module

            model = Float16Module(self.config, model)
        self.model = model
        self.grad_clip = grad_clip
        # Plain AdamW on every rank (megatron's distributed optimizer needs CUDA); data
        # parallel ranks sum their gradients in `optimizer_step`.
        self.optimizer = torch.optim.AdamW(self.core.parameters(), lr=learning_rate, weight_decay=weight_decay)

    # ---- weights in HF layout -------------------------------------------------------
    def slice_hf(self, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's slice of a full HF-layout state (weights, or anything shaped like them)."""
        return hf_to_megatron(hf, self.shape, tp=self.tp, tp_rank=self.tp_rank, pp=self.pp, pp_rank=self.pp_rank)

    def load_hf_state(self, hf_state: dict[str, torch.Tensor]) -> None:
        """Load full HF parameters; each rank keeps its own slice."""
        mine = self.slice_hf(hf_state)
        own = self.core.state_dict()
        missing = [k for k in own if not k.endswith("_extra_state") and k not in mine]
        if missing:
            raise KeyError(f"HF weights do not cover megatron parameters: {missing[:5]}")
        with torch.no_grad():
            for name, tensor in mine.items():
                own[name].copy_(tensor.to(own[name].dtype))

    def export_hf_state(self) -> dict[str, torch.Tensor]:
        """Full HF parameters, gathered over tensor and pipeline ranks (every rank gets them).

        A collective: every rank of the model-parallel group must call it.
        """
        return self.gather_hf({k: v.detach() for k,
                               v in self.core.state_dict().items() if not k.endswith("_extra_state")})

    def gather_hf(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full HF layout of a state shaped like this rank's parameters (megatron names), e.g.
        the parameters themselves or an optimizer moment. A collective over the model-parallel group."""
        stage: list[dict[str, torch.Tensor]] = [{} for _ in range(self.tp)]
        for name, tensor in local.items():
            parts = [torch.empty_like(tensor) for _ in range(self.tp)]
            dist.all_gather(parts, tensor.contiguous(), group=self.tp_group)
            for rank, part in enumerate(parts):
                stage[rank][name] = part
        stages: list[list[dict[str, torch.Tensor]]] = [stage]
        if self.pp > 1:
            # Stages hold different parameter names, so tensors travel as objects here
            # (export is once per weight sync or checkpoint, not per step).
            stages = [None] * self.pp  # type: ignore[list-item]
            dist.all_gather_object(stages, [{k: v.cpu() for k, v in r.items()} for r in stage], group=self.pp_group)
        return megatron_to_hf(stages, self.shape)

    def owners(self) -> dict[str, int]:
        """Which tensor-parallel rank of this stage converts and publishes each parameter:
        largest first, to the rank holding the fewest bytes so far (every rank computes the
        same map: names and slice shapes are the same on every rank of a stage)."""
        sizes = {k: v.numel() * v.element_size() for k,
                 v in self.core.state_dict().items() if not k.endswith("_extra_state")}
        load, owner = [0] * self.tp, {}
        for name in sorted(sizes, key=lambda k: (-sizes[k], k)):
            rank = load.index(min(load))
            owner[name] = rank
            load[rank] += sizes[name]
        return owner

    def owned_hf_state(self) -> dict[str, torch.Tensor]:
        """The HF tensors this rank publishes (a sharded weight sync): whole tensors of the
        parameters it owns (`owners`), their slices gathered from the other tensor-parallel
        ranks to it alone. No rank holds more than its share; data-parallel replicas other
        than the first hold nothing. A collective over the tensor-parallel group."""
        if self.dp_rank != 0:
            return {}
        ranks = dist.get_process_group_ranks(self.tp_group)
        out: dict[str, torch.Tensor] = {}
        state = self.core.state_dict()
        for name, owner in sorted(self.owners().items()):
            tensor = state[name].detach().contiguous()
            parts = [torch.empty_like(tensor) for _ in range(self.tp)] if owner == self.tp_rank else None
            if self.tp > 1:
                dist.gather(tensor, parts, dst=ranks[owner], group=self.tp_group)
            elif parts is not None:
                parts[0] = tensor
            if parts is not None:
                out.update(param_to_hf(name, [t.cpu() for t in parts], self.shape, pp=self.pp, pp_rank=self.pp_rank))
        return out

    # ---- forward ----------------------------------------------------------------------
    def _mask_padded_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        shard = self.vocab // self.tp
        start = self.tp_rank * shard
        if start + shard <= self.shape.vocab_size:
            return logits
        pad_from = max(self.shape.vocab_size - start, 0)  # padded rows live on the last ranks
        logits = logits.clone()
        logits[..., pad_from:] = float("-inf")
        return logits

    def _logprobs_from_logits(self, logits: torch.Tensor, input_ids: torch.Tensor,
                              temperature: float = 1.0) -> torch.Tensor:
        from megatron.core import tensor_parallel

        logits = self._mask_padded_vocab(logits.float() / temperature)[:, :-1]
        targets = input_ids[:, 1:].to(self.device)
        # [s, b, v/tp] is the layout the kernel documents; it is elementwise over the rest.
        nll = tensor_parallel.vocab_parallel_cross_entropy(logits.transpose(0, 1).contiguous(),
                                                           targets.transpose(0, 1).contiguous())
        return -nll.transpose(0, 1)

    def _run_schedule(self, input_ids: torch.Tensor, loss_fn: LossFn | None,
                      temperature: float = 1.0) -> torch.Tensor | None:
        """One forward (and backward when `loss_fn` is given) through megatron's schedule.

        The schedule passes activations between pipeline stages; with one stage it is a
        plain forward/backward. The whole batch is one micro-batch, so the loss sees every
        sample at once (token-level aggregation needs the batch's token count). Returns
        the per-token logprobs on the last pipeline stage, None elsewhere.
        """
        from megatron.core.pipeline_parallel import get_forward_backward_func

        batch, seq = input_ids.shape
        ids = input_ids.to(self.device)
        positions = torch.arange(seq, device=self.device).unsqueeze(0).expand(batch, -1)
        # Explicit causal mask (True = masked): megatron's default builds it on CUDA.
        mask = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool, device=self.device), diagonal=1)
        result: dict[str, torch.Tensor] = {}

        def forward_step(data_iterator, model):
            next(data_iterator)
            output = model(ids, positions, mask)

            def finish(logits: torch.Tensor):
                logprobs = self._logprobs_from_logits(logits, ids, temperature)
                result["logprobs"] = logprobs.detach()
                loss = loss_fn(logprobs) if loss_fn is not None else logprobs.sum() * 0.0
                return loss, {"loss": loss.detach()}

            return output, finish

        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([None]),
            model=[self.model],
            num_microbatches=1,
            seq_length=seq,
            micro_batch_size=batch,
            forward_only=loss_fn is None,
        )
        return result.get("logprobs")

    def token_logprobs(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """log p(token_t | tokens_<t) for t >= 1: shape [batch, seq-1]; None off the last pipeline stage."""
        self.model.eval()
        with torch.no_grad():
            return self._run_schedule(input_ids, None)

    # ---- training ---------------------------------------------------------------------
    def _clip_grads(self) -> float:
        """Clip by the global gradient norm over all tensor- and pipeline-parallel shards.

        Parameters replicated across TP ranks (norms) count once; sharded ones add up.
        A per-rank norm would clip every shard by a different factor.
        """
        grads = [p.grad for p in self.core.parameters() if p.grad is not None]
        owned = [p.grad for p in self.core.parameters() if p.grad is not None
                 and (getattr(p, "tensor_model_parallel", False) or self.tp_rank == 0)]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for g in owned:
            total += g.detach().double().pow(2).sum()
        dist.all_reduce(total, group=self.mp_group)
        norm = float(total.sqrt())
        scale = self.grad_clip / (norm + 1e-6)
        if scale < 1.0:
            for g in grads:
                g.mul_(scale)
        return norm

    def train_step(self, input_ids: torch.Tensor, loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step on `loss_fn(token_logprobs(input_ids))` (evaluated on the last stage).

        Returns the loss and the global gradient norm; the loss is broadcast from the last
        pipeline stage so every rank reports the same numbers.
        """
        self.zero_grad()
        losses: list[torch.Tensor] = []

        def recording_loss(logprobs: torch.Tensor, _entropy: torch.Tensor | None) -> torch.Tensor:
            loss = loss_fn(logprobs[:, 1:])
            losses.append(loss.detach())
            return loss

        self.forward_backward(input_ids, torch.ones_like(input_ids, dtype=torch.bool), 1.0, recording_loss)
        grad_norm = self.optimizer_step()
        loss = losses[0].reshape(()).double() if losses else torch.zeros((), dtype=torch.float64, device=self.device)
        if self.pp > 1:
            dist.broadcast(loss, src=dist.get_global_rank(self.pp_group, self.pp - 1), group=self.pp_group)
        return {"loss": float(loss), "grad_norm": grad_norm}

    # ---- the PolicyBackend interface of rl.ppo (the update both backends share) -------
    # Sequences are right-padded, so the causal mask alone keeps padding out of every valid
    # position; ``valid`` is not needed here. No entropies (vocab-parallel entropy is not
    # implemented): an entropy bonus is refused by the update.

    def logprobs(self, ids: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
        """[B, T] per-token logprobs (position 0 holds 0), on every pipeline stage."""
        self.model.eval()
        with torch.no_grad():
            lp = self._run_schedule(ids, None, temperature)
        out = torch.zeros(ids.shape, dtype=torch.float32, device=self.device)
        if lp is not None:
            out[:, 1:] = lp
        if self.pp > 1:
            dist.broadcast(out, src=dist.get_global_rank(self.pp_group, self.pp - 1), group=self.pp_group)
        return out.cpu()

    def forward_backward(self, ids: torch.Tensor, valid: torch.Tensor, temperature: float, loss_fn) -> None:
        self.model.train()

        def padded(logprobs: torch.Tensor) -> torch.Tensor:
            full = torch.nn.functional.pad(logprobs, (1, 0))
            return loss_fn(full.cpu() if full.device != torch.device("cpu") else full, None)

        self._run_schedule(ids, padded, temperature)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> float:
        if self.dp > 1:
            # Each rank's loss is already divided by the whole mini-batch's token count, so
            # the sum of the ranks' gradients is the mini-batch's gradient.
            # A rank whose share of the mini-batch was empty has no gradients: zeros, so
            # that every rank joins every all-reduce.
            for p in self.core.parameters():
                if p.requires_grad:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad, group=self.dp_group)
        grad_norm = self._clip_grads()
        self.optimizer.step()
        return grad_norm

    def dp_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.dp == 1:
            return value
        total = value.clone()
        dist.all_reduce(total, group=self.dp_group)
        return total

    def dp_max(self, value: torch.Tensor) -> torch.Tensor:
        if self.dp == 1:
            return value
        highest = value.clone()
        dist.all_reduce(highest, op=dist.ReduceOp.MAX, group=self.dp_group)
        return highest
