"""The in-process torch engine (tiny models, CPU jobs, colocated mode)."""

from __future__ import annotations

import threading

import torch

from kuberl.workloads.engines.base import Completion, Engine, GenerationRequest
from kuberl.workloads.policy.tiny.model import KVCache, TinyQwen2ForCausalLM


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
            # Temperature 0 is greedy (evaluation); its logprobs are those of the untempered policy.
            logp = torch.log_softmax(logits.float() / torch.where(temps > 0, temps, 1.0), dim=-1)
            sampled = torch.multinomial(logp.exp(), 1, generator=self._gen).squeeze(-1)
            tok = torch.where(temps.squeeze(-1) > 0, sampled, logp.argmax(-1))
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
