"""Rollout engines behind one interface: generate groups with per-token logprobs, swap weights.

`TorchEngine` runs the tiny policy in-process (CPU-only runs, tests, colocated mode).
An SGLang HTTP client will implement the same `Engine` interface (``/generate`` with token
ids and logprobs, ``/update_weights_from_disk``, ``/pause_generation`` …).

Behaviour logprobs are those of the temperature-scaled distribution the token was drawn
from; the trainer scores with the same temperature so ratios compare like with like.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field

import torch

from kuberl.workloads.models import CharTokenizer, KVCache, TinyQwen2ForCausalLM


@dataclass(frozen=True)
class GenerationRequest:
    """Sample ``n`` continuations of one prompt."""

    prompt_ids: list[int]
    n: int = 1
    max_new_tokens: int = 16
    temperature: float = 1.0
    stop_ids: tuple[int, ...] = (CharTokenizer.EOS,)


@dataclass
class Completion:
    """One sampled continuation; ``token_ids`` include the stop token when one was produced."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop", "length" or "abort"
    policy_version: int = 0
    meta: dict = field(default_factory=dict)


class Engine(abc.ABC):
    """What the rollout agent and the colocated trainer need from an inference engine."""

    policy_version: int = -1

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """One list of ``request.n`` completions per request, in order."""

    @abc.abstractmethod
    def load_state_dict(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """Replace the weights (HF names) and tag later generations with ``version``."""

    def pause(self) -> None:
        """Stop starting new generations (in-flight ones finish)."""

    def resume(self) -> None:
        """Undo `pause`."""

    def abort(self, requests: list[GenerationRequest]) -> int:
        """Stop generating for these requests of the running `generate` call, if the engine
        can (their completions then end early with finish reason "abort"); returns how many
        rows it stopped. The default cannot: the batch runs to its end."""
        return 0


class TorchEngine(Engine):
    """Batched sampling with a KV cache on the tiny pure-torch model."""

    def __init__(self, model: TinyQwen2ForCausalLM, version: int = 0, seed: int | None = None):
        self.model = model.eval()
        self.policy_version = version
        self._lock = threading.Lock()  # a weight swap never interleaves with a generation step
        self._gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        with self._lock:
            self.model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
            self.policy_version = version

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        with self._lock:
            # Rows are grouped by (temperature, max_new_tokens) would be faster for mixed batches;
            # in practice one batch shares its settings, so one pass over all rows is enough.
            rows = [(i, r) for i, r in enumerate(requests) for _ in range(r.n)]
            temps = torch.tensor([r.temperature for _, r in rows]).unsqueeze(-1)
            max_new = max(r.max_new_tokens for _, r in rows)
            completions = self._sample([r.prompt_ids for _, r in rows], temps, max_new,
                                       [r.max_new_tokens for _, r in rows], [set(r.stop_ids) for _, r in rows])
            version = self.policy_version
        out: list[list[Completion]] = [[] for _ in requests]
        for (i, _), (ids, lps, reason) in zip(rows, completions, strict=True):
            out[i].append(Completion(ids, lps, reason, version))
        return out

    def _sample(self, prompts, temps, max_new, limits, stops):
        b = len(prompts)
        plen = max(len(p) for p in prompts)
        ids = torch.zeros(b, plen, dtype=torch.long)
        valid = torch.zeros(b, plen + max_new, dtype=torch.bool)
        for row, p in enumerate(prompts):  # left-pad so every row's next token is at the same column
            ids[row, plen - len(p):] = torch.tensor(p)
            valid[row, plen - len(p):plen] = True
        cache = KVCache(self.model.config, b, plen + max_new)
        positions = (valid[:, :plen].long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(plen, plen, dtype=torch.bool).tril()
        mask = (causal[None] & valid[:, None, :plen]) | torch.eye(plen, dtype=torch.bool)[None]
        logits = self.model(ids, positions, mask, cache)[:, -1]
        next_pos = positions[:, -1] + 1
        out_ids = [[] for _ in range(b)]
        out_lps = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool)
        reasons = ["length"] * b
        for step in range(max_new):
            logp = torch.log_softmax(logits.float() / temps, dim=-1)
            tok = torch.multinomial(logp.exp(), 1, generator=self._gen).squeeze(-1)
            tok_lp = logp.gather(-1, tok[:, None]).squeeze(-1)
            for row in range(b):
                if done[row]:
                    continue
                t = int(tok[row])
                out_ids[row].append(t)
                out_lps[row].append(float(tok_lp[row]))
                if t in stops[row]:
                    done[row], reasons[row] = True, "stop"
                elif len(out_ids[row]) >= limits[row]:
                    done[row] = True
            if bool(done.all()) or step == max_new - 1:
                break
            valid[:, plen + step] = True
            mask = valid[:, None, : plen + step + 1]
            logits = self.model(tok[:, None], next_pos[:, None], mask, cache)[:, -1]
            next_pos = next_pos + 1
        return list(zip(out_ids, out_lps, reasons, strict=True))
