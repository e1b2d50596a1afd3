"""A job's model directory and tokenizer, from ``model.source`` / ``model.tokenizer``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from kuberl.workloads.config import WorkloadConfig
from kuberl.workloads.policy.sources import local_model_dir
from kuberl.workloads.policy.tokenizer import Tokenizer


def job_s3_client(cfg: WorkloadConfig, source: str):
    """s3:// models and datasets are read with the weight store's endpoint and credentials."""
    if urlparse(source).scheme != "s3":
        return None
    from kuberl.workloads.weights.s3 import s3_client

    return s3_client(cfg.weight_store.endpoint, region_name=cfg.weight_store.region or "us-east-1")


def job_model_dir(cfg: WorkloadConfig) -> Path:
    return local_model_dir(cfg.model.source, s3_client=job_s3_client(cfg, cfg.model.source))


def job_tokenizer(cfg: WorkloadConfig) -> Tokenizer:
    source = cfg.model.tokenizer or cfg.model.source
    return Tokenizer.from_pretrained(local_model_dir(source, s3_client=job_s3_client(cfg, source)))
