"""A RolloutPool's children: the inline pool of a job, the rollout Deployment and Service. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kuberl.operator.api import RLJob, RolloutPool
from kuberl.operator.api.constants import (
    WORKLOAD_METRICS_PORT,
    WEIGHT_RELAY_PORT,
    API_VERSION,
    ENGINE_PORT,
    LABEL_JOB,
    ROLE_ROLLOUT,
    TEMPLATE_REPLICAS_ANNOTATION,
)
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.children.common import (
    CONFIG_VOLUME_MOUNT,
    ENGINE_INITIAL_MODEL_DIR,
    ENGINE_SCRATCH_DIR,
    ENGINE_SCRATCH_ENV,
    ENGINE_SCRATCH_VOLUME,
    ROLE_AGENT_DEFAULTS,
    ROLE_ENGINE_DEFAULTS,
    ROLE_INIT_DEFAULTS,
    ROLE_TORCH_AGENT_DEFAULTS,
    SGLANG_CPU_KERNELS_DIR,
    apply_placement,
    common_labels,
    config_volume,
    container_resources,
    credential_env,
    deployment_manifest,
    downward_env,
    env_list,
    is_paused,
    nats_credentials,
    object_meta,
    restrict_pod,
    restricted_container_security,
    shm_mount,
    shm_volume,
    tmp_mount,
    tmp_volume,
    unless_user_set,
    user_env,
    writable_env,
    mount_hub_cache,
)
from kuberl.operator.decisions.job_shape import generating_pool
from kuberl.operator.naming import inline_pool_name, pool_selector
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.engines.sglang.flags import CPU_BACKEND_FLAGS, IDLE_FLAGS
from kuberl.workloads.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    METRICS_PORT_ENV,
    NODE_NAME_ENV,
    POD_IP_ENV,
    WEIGHT_RELAY_PORT_ENV,
)


def inline_rollout_pool(job: RLJob, namespace: str, settings: OperatorSettings) -> dict[str, Any] | None:
    """The RolloutPool the job owns: its template, or a default one; None when it uses a poolRef or is colocated."""
    rollout = job.spec.rollout
    if rollout is not None and rollout.pool_ref:
        return None
    spec = generating_pool(job)
    if spec is None:
        return None
    name = job.metadata["name"]
    labels = {**common_labels(name, ROLE_ROLLOUT, settings), LABEL_JOB: name}
    meta = object_meta(inline_pool_name(name), namespace, labels)
    meta["annotations"] = {**meta.get("annotations", {}), TEMPLATE_REPLICAS_ANNOTATION: str(spec.replicas)}
    return {"apiVersion": API_VERSION, "kind": "RolloutPool", "metadata": meta, "spec": spec.to_wire()}


def _model_path(source: str | None) -> str | None:
    """What the engine's --model-path gets: hf:// and file:// become plain names/paths."""
    if not source:
        return None
    if source.startswith("hf://"):
        return source[len("hf://"):]
    if source.startswith("file://"):
        return source[len("file://"):]
    return source


def engine_server_args(spec: RolloutPoolSpec, model_path: str | None) -> list[str]:
    """The SGLang server's command-line arguments for one rollout pod."""
    engine = spec.engine
    args = ["--model-path", model_path] if model_path else []
    # Loopback only: the agent beside it is its one client, and its admin endpoints
    # (weight updates, abort, cache flush) must not be reachable from other pods.
    args += ["--host", "127.0.0.1", "--port", str(ENGINE_PORT), "--tp-size", str(engine.tensor_parallel_size),
             "--mem-fraction-static", str(engine.mem_fraction_static), *IDLE_FLAGS]
    if spec.gpus_per_replica == 0:
        args += ["--device", "cpu", *CPU_BACKEND_FLAGS]
    if engine.context_length:
        args += ["--context-length", str(engine.context_length)]
    if engine.max_running_requests:
        args += ["--max-running-requests", str(engine.max_running_requests)]
    if engine.fp8:
        args += ["--quantization", "fp8"]
    return args + list(engine.args or [])


def loopback_probe(path: str, *, period: int, timeout: int = 5, failure_threshold: int | None = None) -> dict[str, Any]:
    """A probe of the engine's ``path`` on loopback, run inside the container.

    The kubelet's httpGet probes connect to the pod IP, where a server bound to 127.0.0.1
    does not listen; an exec probe runs the image's python3 in the container's network
    namespace instead. A non-2xx answer raises (HTTPError), a hung server times out just
    before the kubelet's own timeout would: either way a non-zero exit fails the probe."""
    script = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))"
    probe: dict[str, Any] = {
        "exec": {"command": ["python3", "-c", script, f"http://127.0.0.1:{ENGINE_PORT}{path}",
                             str(max(timeout - 1, 1))]},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
    }
    if failure_threshold is not None:
        probe["failureThreshold"] = failure_threshold
    return probe


def credential_secrets(job_spec: Mapping[str, Any] | None) -> dict[str, str | None]:
    """What the rollout pods of a job's (wire-form) spec reach the job's stores with:
    rollout_deployment's ``buffer_credentials_secret``, ``weight_store_credentials_secret``
    and ``weight_store_endpoint`` (where an s3:// model is read, as the trainer does)."""
    spec = job_spec or {}

    def name(section: str) -> str | None:
        return ((spec.get(section) or {}).get("credentialsSecret") or {}).get("name")

    return {"buffer_credentials_secret": name("buffer"), "weight_store_credentials_secret": name("weightStore"),
            "weight_store_endpoint": (spec.get("weightStore") or {}).get("endpoint")}


def _initial_model_container(model_source: str, image: str, settings: OperatorSettings,
                             endpoint: str | None, store_secret: str | None) -> dict[str, Any]:
    """Writes a builtin:// model (a real HF checkpoint) or an s3:// one (fetched with the weight
    store's endpoint and credentials, like the trainer's) into the scratch dir before the
    server starts; SGLang loads it like any other model."""
    env = {"KUBERL_MODEL_CACHE": f"{ENGINE_SCRATCH_DIR}/.models"}  # same volume: the copy is a hard link
    from_s3 = model_source.startswith("s3://")
    if from_s3 and endpoint:
        env["KUBERL_MODEL_S3_ENDPOINT"] = endpoint
    return {
        "name": "initial-model",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "kuberl.workloads.policy.sources", model_source, ENGINE_INITIAL_MODEL_DIR],
        # Store credentials only where the model is read from the store.
        "env": env_list(env) + (credential_env(store_secret) if from_s3 else []) + writable_env([]),
        "resources": container_resources(None, 0, ROLE_INIT_DEFAULTS),
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": ENGINE_SCRATCH_VOLUME, "mountPath": ENGINE_SCRATCH_DIR}, tmp_mount()],
    }


def rollout_deployment(
    pool: RolloutPool,
    namespace: str,
    settings: OperatorSettings,
    *,
    bound_job: str | None = None,
    model_source: str | None = None,
    tokenizer: str | None = None,
    buffer_credentials_secret: str | None = None,
    weight_store_credentials_secret: str | None = None,
    weight_store_endpoint: str | None = None,
    hub_cache=None,
) -> dict[str, Any]:
    """Rollout pods: an SGLang server plus the kuberl agent, or the agent alone with the in-process torch engine.

    The agent reads the bound job's ConfigMap; a pool not yet bound waits for it (the
    mount is optional so the pod still starts and reports not-ready). With SGLang, both
    containers mount one scratch emptyDir: the agent writes each fetched weight version
    there and the server loads it from there; the agent reaches the server on loopback,
    the only address the server listens on. ``buffer_credentials_secret`` and
    ``weight_store_credentials_secret``: the bound job's spec.buffer/spec.weightStore
    credentialsSecret names (`credential_secrets`), given to the agent only: the engine
    never talks to NATS or S3.
    """
    name = pool.metadata["name"]
    spec = pool.spec
    engine = spec.engine
    agent = spec.agent
    replicas = 0 if is_paused(pool.metadata) else spec.replicas
    selector = pool_selector(name)
    labels = {**common_labels(name, ROLE_ROLLOUT, settings), **selector}
    if bound_job:
        labels[LABEL_JOB] = bound_job
    # Everything else the agent needs (engine, concurrency, swap policy, the engine's URL)
    # is in the bound job's config: one source, whatever pod or process reads it.
    agent_env = {CONFIG_ENV: DEFAULT_CONFIG_PATH, METRICS_PORT_ENV: str(WORKLOAD_METRICS_PORT)}
    nats_env, nats_mounts, nats_volumes = nats_credentials(buffer_credentials_secret)
    containers = []
    init_containers = []
    agent_mounts = [CONFIG_VOLUME_MOUNT, tmp_mount(), *nats_mounts]
    volumes: list[dict[str, Any]] = []
    scratch_mount = {"name": ENGINE_SCRATCH_VOLUME, "mountPath": ENGINE_SCRATCH_DIR}
    agent_image = agent.image or settings.workload_image
    if engine.type == "sglang":
        agent_env[ENGINE_SCRATCH_ENV] = ENGINE_SCRATCH_DIR
        agent_mounts.append(scratch_mount)
        cpu = spec.gpus_per_replica == 0
        path = _model_path(model_source)
        if model_source and model_source.startswith(("builtin://", "s3://")):
            init_containers.append(_initial_model_container(model_source, agent_image, settings,
                                                            weight_store_endpoint, weight_store_credentials_secret))
            path = ENGINE_INITIAL_MODEL_DIR
        engine_env = {"PYTHONUNBUFFERED": "1"}
        if cpu:
            engine_env.update({"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": SGLANG_CPU_KERNELS_DIR})
        engine_resources = container_resources(spec.resources, spec.gpus_per_replica, ROLE_ENGINE_DEFAULTS)
        # No container port: the server listens on loopback only (engine_server_args).
        containers.append({
            "name": "engine",
            "image": engine.image or (settings.sglang_cpu_image if cpu else settings.sglang_image),
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["python3", "-m", "sglang.launch_server"],
            "args": engine_server_args(spec, path),
            "env": env_list(engine_env) + writable_env([]),
            "resources": engine_resources,
            "securityContext": restricted_container_security(),
            # Loading weights takes minutes: the startup probe holds the other two off until
            # /health answers. Ready = it can generate; alive = the HTTP server answers.
            "startupProbe": loopback_probe("/health", period=10, failure_threshold=180),
            "readinessProbe": loopback_probe("/health_generate", period=10),
            "livenessProbe": loopback_probe("/health", period=15, failure_threshold=4),
            # SGLang's caches (flashinfer/triton JIT, HF downloads) go under HOME on /tmp.
            "volumeMounts": [shm_mount(), dict(scratch_mount), tmp_mount()],
        })
        volumes += [shm_volume(engine_resources), {"name": ENGINE_SCRATCH_VOLUME, "emptyDir": {}}]
        # AgentSpec has no resources field: the agent beside an engine always gets the defaults.
        agent_resources = container_resources(None, 0, ROLE_AGENT_DEFAULTS)
    else:
        # The torch engine runs inside the agent process: the agent gets the pool's resources.
        agent_resources = container_resources(spec.resources, spec.gpus_per_replica, ROLE_TORCH_AGENT_DEFAULTS)
    users = user_env(agent.env)
    ports = [{"name": "metrics", "containerPort": WORKLOAD_METRICS_PORT}]
    if agent.weight_fetch == "perNode":
        # Which node it is on and the address its neighbours reach it at: the agents of a
        # node download each version once and copy it from one another (rollout.node_share).
        agent_env[WEIGHT_RELAY_PORT_ENV] = str(WEIGHT_RELAY_PORT)
        ports.append({"name": "weights", "containerPort": WEIGHT_RELAY_PORT})
        node_env = unless_user_set([{"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
                                    for name, path in ((NODE_NAME_ENV, "spec.nodeName"), (POD_IP_ENV, "status.podIP"))],
                                   users)
    else:
        node_env = []
    containers.append(
        {
            "name": "agent",
            "image": agent_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["python", "-m", "kuberl.workloads.rollout"],
            "env": env_list(agent_env)
            + downward_env()
            + node_env
            + nats_env
            + credential_env(weight_store_credentials_secret)
            + writable_env(users)
            + users,
            "ports": ports,
            "resources": agent_resources,
            "securityContext": restricted_container_security(),
            "volumeMounts": agent_mounts,
        }
    )
    volumes = [config_volume(bound_job, optional=True) if bound_job else {"name": "kuberl-config", "emptyDir": {}},
               tmp_volume(), *volumes, *nats_volumes]
    pod_spec: dict[str, Any] = {"containers": containers, "volumes": volumes}
    if init_containers:
        pod_spec["initContainers"] = init_containers
    mount_hub_cache(pod_spec, hub_cache)
    if settings.workload_service_account:
        pod_spec["serviceAccountName"] = settings.workload_service_account
    restrict_pod(pod_spec)
    apply_placement(pod_spec, spec.placement)
    deployment = deployment_manifest(name, namespace, labels, selector, replicas, pod_spec)
    # Engines take minutes to load weights: surge new pods rather than drop capacity.
    deployment["spec"]["strategy"] = {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    return deployment


def rollout_service(pool: RolloutPool, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    name = pool.metadata["name"]
    selector = pool_selector(name)
    # The metrics port only: the SGLang server listens on the pod's loopback (its admin
    # endpoints are for the agent beside it, not for the namespace).
    ports = [{"name": "metrics", "port": WORKLOAD_METRICS_PORT, "targetPort": WORKLOAD_METRICS_PORT}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, namespace, {**common_labels(name, ROLE_ROLLOUT, settings), **selector}),
        "spec": {"selector": selector, "ports": ports},
    }
