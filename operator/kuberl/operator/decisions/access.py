"""What a job may reach and with which credentials: Secrets it names, endpoints it dials,
sandbox settings it may switch off. Pure: the handler passes what it looked up.

Each check returns (field path, message) pairs like `references.semantic_errors`, so a
problem becomes the job's Failed/InvalidSpec condition naming the field and the fix, and
the job starts by itself once the Secret appears or the spec is corrected.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from kuberl.operator.api import RLJob
from kuberl.operator.api.agentenv import AgentEnvSpec
from kuberl.workloads.config import S3_CREDENTIAL_KEYS

NATS_FORMS = "`creds` (a NATS credentials file), or `user` and `password`, or `token`"


@dataclass(frozen=True)
class AccessPolicy:
    """The installation's guard rails (OperatorSettings: chart values security.*)."""

    endpoint_allowlist: tuple[str, ...] = ()  # host patterns; empty allows any
    allow_sandbox_opt_out: bool = False

    @classmethod
    def of(cls, settings: Any) -> AccessPolicy:
        """The policy an installation's OperatorSettings set."""
        return cls(endpoint_allowlist=tuple(settings.endpoint_allowlist),
                   allow_sandbox_opt_out=settings.allow_sandbox_opt_out)


@dataclass(frozen=True)
class SecretNeed:
    """A Secret the job's pods or the operator read: where it is named and which keys it needs."""

    field: str
    name: str
    keys: tuple[str, ...]  # all of these, unless `nats` (any one form of NATS credentials)
    nats: bool = False


def secret_needs(job: RLJob) -> list[SecretNeed]:
    spec = job.spec
    needs = []
    if spec.buffer.credentials_secret is not None:
        needs.append(SecretNeed("spec.buffer.credentialsSecret.name", spec.buffer.credentials_secret.name, (),
                                nats=True))
    if spec.weight_store.credentials_secret is not None:
        needs.append(SecretNeed("spec.weightStore.credentialsSecret.name", spec.weight_store.credentials_secret.name,
                                S3_CREDENTIAL_KEYS))
    wandb = spec.observability.wandb
    if wandb is not None and wandb.api_key_secret is not None:
        needs.append(SecretNeed("spec.observability.wandb.apiKeySecret", wandb.api_key_secret.name,
                                (wandb.api_key_secret.key,)))
    for where, env in _env_lists(job):
        for i, var in enumerate(env or []):
            ref = var.value_from.secret_key_ref if var.value_from is not None else None
            if ref is not None and not ref.optional:
                needs.append(SecretNeed(f"{where}[{i}].valueFrom.secretKeyRef", ref.name, (ref.key,)))
    return needs


def _env_lists(job: RLJob) -> list[tuple[str, Any]]:
    spec = job.spec
    out = [("spec.trainer.env", spec.trainer.env)]
    if spec.rollout is not None and spec.rollout.template is not None:
        out.append(("spec.rollout.template.agent.env", spec.rollout.template.agent.env))
    for i, entry in enumerate(spec.agent_envs or []):
        if entry.spec is not None:
            out.append((f"spec.agentEnvs[{i}].spec.env", entry.spec.env))
    return out


def _has_nats_form(keys: frozenset[str]) -> bool:
    return "creds" in keys or {"user", "password"} <= keys or "token" in keys


def secret_errors(job: RLJob, secrets: dict[str, frozenset[str] | None]) -> list[tuple[str, str]]:
    """``secrets``: name -> the keys the Secret holds (None or absent: it does not exist)."""
    namespace = job.metadata.get("namespace") or "default"
    errors = []
    for need in secret_needs(job):
        keys = secrets.get(need.name)
        if keys is None:
            what = NATS_FORMS if need.nats else ", ".join(need.keys)
            errors.append((need.field,
                           f"Secret {need.name!r} does not exist in namespace {namespace}; create it with {what}"))
        elif need.nats and not _has_nats_form(keys):
            errors.append((need.field,
                           f"Secret {need.name!r} holds none of {NATS_FORMS} (it has: "
                           f"{', '.join(sorted(keys)) or 'no keys'})"))
        elif missing := [k for k in need.keys if k not in keys]:
            errors.append((need.field, f"Secret {need.name!r} has no key {', '.join(missing)}"))
    return errors


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def endpoint_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    return not allowlist or any(fnmatchcase(host_of(url), pattern.lower()) for pattern in allowlist)


def endpoint_errors(job: RLJob, policy: AccessPolicy) -> list[tuple[str, str]]:
    """The operator dials the buffer URL itself, and pods dial both: an installation can
    confine them, so a job cannot aim the operator at arbitrary hosts and ports."""
    errors = []
    allowed = ", ".join(policy.endpoint_allowlist)
    for field, url in (("spec.buffer.url", job.spec.buffer.url),
                       ("spec.weightStore.endpoint", job.spec.weight_store.endpoint)):
        if url and not endpoint_allowed(url, policy.endpoint_allowlist):
            errors.append((field,
                           f"host {host_of(url)!r} is not among the endpoints this installation allows ({allowed}); "
                                  "use one of them or ask the operator's administrators to add it (chart value "
                                  "security.endpointAllowlist)"))
    return errors


def sandbox_errors(spec: AgentEnvSpec, where: str, policy: AccessPolicy) -> list[tuple[str, str]]:
    """Environments run model-written code: switching isolation off is the installation's call."""
    if policy.allow_sandbox_opt_out:
        return []
    sandbox = spec.sandbox
    off = [name for name, value in (("denyEgress", sandbox.deny_egress), ("runAsNonRoot", sandbox.run_as_non_root),
                                    ("readOnlyRootFilesystem", sandbox.read_only_root_filesystem)) if not value]
    return [(f"{where}.sandbox.{name}", "this installation does not allow switching the AgentEnv sandbox off "
                                       "(chart value security.allowSandboxOptOut); remove the setting") for name in off]


def redact_url(url: str) -> str:
    """A URL safe for logs, conditions and Events: user and password removed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()
