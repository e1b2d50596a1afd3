"""Every JetStream name of a job, derived from its namespace and name (injective, NATS-safe)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_MAX_TOKEN = 200  # JetStream names may be 255 bytes; leave room for prefixes and suffixes.


def job_token(namespace: str, name: str) -> str:
    """A NATS-safe token for one job, unique per (namespace, name).

    Kubernetes namespaces are DNS labels (no '.', no '_'), object names DNS subdomains (may
    hold '.', never '_'). '_' separates the two and '.' (a subject separator in NATS) becomes
    '_' inside the name: the mapping stays injective. Overlong tokens are truncated and made
    unique again with a hash.
    """
    if not namespace or not name:
        raise ValueError("namespace and name must be non-empty")
    token = f"{namespace}_{name.replace('.', '_')}"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise ValueError(f"not a Kubernetes namespace/name: {namespace!r}/{name!r}")
    if len(token) > _MAX_TOKEN:
        digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:12]
        token = f"{token[: _MAX_TOKEN - 13]}-{digest}"
    return token


@dataclass(frozen=True)
class JobNames:
    """Every JetStream name a job uses, derived from its namespace and name."""

    prompts_stream: str
    trajectories_stream: str
    kv_bucket: str
    prompts_subject: str
    trajectories_subject: str
    prompts_consumer: str = "rollout"
    trajectories_consumer: str = "trainer"

    @classmethod
    def for_job(cls, namespace: str, name: str) -> JobNames:
        t = job_token(namespace, name)
        return cls(
            prompts_stream=f"kuberl_{t}_prompts",
            trajectories_stream=f"kuberl_{t}_trajectories",
            kv_bucket=f"kuberl_{t}_state",
            prompts_subject=f"kuberl.{t}.prompts",
            trajectories_subject=f"kuberl.{t}.trajectories",
        )

    def streams(self) -> list[str]:
        # The KV bucket is a stream too (KV_<bucket>); deleting it removes the bucket.
        return [self.prompts_stream, self.trajectories_stream, f"KV_{self.kv_bucket}"]
