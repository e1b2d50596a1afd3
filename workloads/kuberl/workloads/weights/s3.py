"""The S3 client every part of kuberl uses (weights, checkpoints, datasets, run files).

A module of its own, with boto3 its only import: the operator's `kuberl audit` reads run
files from the store without pulling the weight store's torch and safetensors.
"""

from __future__ import annotations


def s3_client(endpoint_url: str | None = None, *, pool: int = 64, **kwargs):
    """A boto3 S3 client whose connection pool fits parallel multipart transfers."""
    import boto3
    from botocore.config import Config

    cfg = Config(max_pool_connections=pool, retries={"max_attempts": 5, "mode": "standard"},
                 s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint_url, config=cfg, **kwargs)
