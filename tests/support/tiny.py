"""The builtin tiny model's tokenizer, as the processes load it (`policy.sources`)."""

from __future__ import annotations

from functools import lru_cache

from kuberl.workloads.policy.sources import local_model_dir
from kuberl.workloads.policy.tokenizer import Tokenizer


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained(local_model_dir("builtin://tiny"))
