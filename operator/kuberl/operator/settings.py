"""Operator settings: images, intervals and ports, read once from the environment.

Everything an installation or a test tunes lives here, so the handlers and builders never
read the environment themselves (the builders stay pure: they take an `OperatorSettings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_WORKLOAD_IMAGE = "ghcr.io/kuberl/kuberl:0.1.0"
DEFAULT_TRAINER_IMAGE = "ghcr.io/kuberl/kuberl-trainer:0.1.0"
DEFAULT_SGLANG_IMAGE = "lmsysorg/sglang:v0.5.23-cu129"
# The SGLang image plus megatron-core and kuberl (workloads/Dockerfile.colocated): colocated jobs with colocatedEngine
# sglang.
DEFAULT_COLOCATED_IMAGE = "ghcr.io/kuberl/kuberl-colocated:0.1.0"
# SGLang's CPU build plus kuberl's sgl_kernel stand-in (builders.SGLANG_CPU_KERNELS_DIR), for pools with gpusPerReplica
# 0.
DEFAULT_SGLANG_CPU_IMAGE = "ghcr.io/kuberl/kuberl-sglang-cpu:0.1.0"



def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class OperatorSettings:
    """How this installation builds children and how often it reconciles."""

    workload_image: str = DEFAULT_WORKLOAD_IMAGE  # rollout agent, torch trainer, reference envs
    trainer_image: str = DEFAULT_TRAINER_IMAGE  # megatron-core trainer
    colocated_image: str = DEFAULT_COLOCATED_IMAGE  # megatron-core trainer with SGLang beside it
    sglang_image: str = DEFAULT_SGLANG_IMAGE
    sglang_cpu_image: str = DEFAULT_SGLANG_CPU_IMAGE
    image_pull_policy: str = "IfNotPresent"
    workload_service_account: str | None = None  # None: the namespace's default account
    reconcile_interval_s: float = 10.0  # status aggregation, gang supervision, deadlines, TTL
    autoscaler_tick_s: float = 5.0  # how often pools are looked at; each pool's own intervalSeconds gates decisions
    nats_timeout_s: float = 3.0  # connect/request timeout towards a job's NATS server
    metrics_port: int = 9090  # 0 disables the Prometheus endpoint
    health_port: int = 8081  # 0 disables the liveness endpoint
    executor_threads: int = 16  # kopf runs our (synchronous) event handlers in this many threads
    # Periodic rounds (controllers.sweeper) run on threads of their own, so the
    # handlers of create and update events never queue behind them.
    timer_threads: int = 16
    # A standby replica takes over this long after the leader's last keep-alive (kopf's
    # default is 60 s; keep-alives go every lifetime minus 5-10 s).
    peering_lifetime_s: int = 20
    # The RLJob finaliser retries deleting the job's streams this often, 5 s apart, then lets
    # the job go with a Warning: a NATS outage must not block namespace deletion.
    finalizer_retries: int = 12
    extra_labels: dict[str, str] = field(default_factory=dict)
    # A platform team's guard rails (chart: security.*). AgentEnv authors may not switch the
    # sandbox off (denyEgress, runAsNonRoot, readOnlyRootFilesystem) unless this is set.
    allow_sandbox_opt_out: bool = False
    # Hosts (fnmatch patterns, e.g. "*.kuberl-system.svc") a job's buffer URL and weight
    # store endpoint may name; empty: any. The operator dials the buffer URL itself.
    endpoint_allowlist: tuple[str, ...] = ()
    # Read the Secrets a job names (by name; RBAC get on secrets): to authenticate to the
    # job's buffer with the job's own NATS identity and to name a missing Secret in the
    # job's status. Off (chart rbac.readJobSecrets=false): no Secret is ever read; the
    # operator uses its own mounted NATS credentials (KUBERL_NATS_CREDENTIALS_DIR) and a
    # missing Secret shows only on the pods.
    read_job_secrets: bool = True

    @classmethod
    def from_env(cls) -> OperatorSettings:
        d = cls()
        return cls(
            workload_image=os.environ.get("KUBERL_WORKLOAD_IMAGE", d.workload_image),
            trainer_image=os.environ.get("KUBERL_TRAINER_IMAGE", d.trainer_image),
            colocated_image=os.environ.get("KUBERL_COLOCATED_IMAGE", d.colocated_image),
            sglang_image=os.environ.get("KUBERL_SGLANG_IMAGE", d.sglang_image),
            sglang_cpu_image=os.environ.get("KUBERL_SGLANG_CPU_IMAGE", d.sglang_cpu_image),
            image_pull_policy=os.environ.get("KUBERL_IMAGE_PULL_POLICY", d.image_pull_policy),
            workload_service_account=os.environ.get("KUBERL_WORKLOAD_SERVICE_ACCOUNT") or None,
            reconcile_interval_s=_env_float("KUBERL_RECONCILE_INTERVAL", d.reconcile_interval_s),
            autoscaler_tick_s=_env_float("KUBERL_AUTOSCALER_TICK", d.autoscaler_tick_s),
            nats_timeout_s=_env_float("KUBERL_NATS_TIMEOUT", d.nats_timeout_s),
            metrics_port=_env_int("KUBERL_METRICS_PORT", d.metrics_port),
            health_port=_env_int("KUBERL_HEALTH_PORT", d.health_port),
            executor_threads=_env_int("KUBERL_EXECUTOR_THREADS", d.executor_threads),
            timer_threads=_env_int("KUBERL_TIMER_THREADS", d.timer_threads),
            peering_lifetime_s=_env_int("KUBERL_PEERING_LIFETIME", d.peering_lifetime_s),
            finalizer_retries=_env_int("KUBERL_FINALIZER_RETRIES", d.finalizer_retries),
            allow_sandbox_opt_out=os.environ.get("KUBERL_ALLOW_SANDBOX_OPT_OUT", "").lower() in ("1", "true", "yes"),
            read_job_secrets=os.environ.get("KUBERL_READ_JOB_SECRETS", "true").lower() not in ("0", "false", "no"),
            endpoint_allowlist=tuple(h.strip() for h in os.environ.get("KUBERL_ENDPOINT_ALLOWLIST",
                                                                       "").split(",") if h.strip()),
        )
