"""A RolloutPool's children: the inline pool of a job, the rollout Deployment and Service. Pure."""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import RLJob, RolloutPool
from kuberl.operator.api.constants import (
    WORKLOAD_METRICS_PORT,
    API_VERSION,
    ENGINE_PORT,
    LABEL_JOB,
    ROLE_ROLLOUT,
)
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.children.common import (
    CONFIG_VOLUME_MOUNT,
    ENGINE_INITIAL_MODEL_DIR,
    ENGINE_SCRATCH_DIR,
    ENGINE_SCRATCH_ENV,
    ENGINE_SCRATCH_VOLUME,
    SGLANG_CPU_FLAGS,
    SGLANG_CPU_KERNELS_DIR,
    apply_placement,
    common_labels,
    config_volume,
    container_resources,
    deployment_manifest,
    downward_env,
    env_list,
    is_paused,
    object_meta,
    user_env,
)
from kuberl.operator.naming import inline_pool_name, pool_selector
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, METRICS_PORT_ENV


def default_pool_spec(job: RLJob) -> RolloutPoolSpec:
    """The pool a decoupled job gets when it names none: CPU torch engine for torch trainers."""
    if job.spec.trainer.backend == "torch":
        return RolloutPoolSpec.model_validate({"engine": {"type": "torch"}, "gpusPerReplica": 0})
    return RolloutPoolSpec()


def generating_pool(job: RLJob, referenced: RolloutPoolSpec | None = None) -> RolloutPoolSpec | None:
    """The RolloutPool spec a job generates with: None in colocated mode (the trainer
    generates); else the referenced pool's (spec.rollout.poolRef), the inline template,
    or the default pool."""
    if job.spec.mode == "colocated":
        return None
    rollout = job.spec.rollout
    if rollout is not None and rollout.pool_ref:
        return referenced
    if rollout is not None and rollout.template is not None:
        return rollout.template
    return default_pool_spec(job)


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
    return {"apiVersion": API_VERSION, "kind": "RolloutPool", "metadata": object_meta(inline_pool_name(name), namespace, labels), "spec": spec.to_wire()}


def _model_path(source: str | None) -> str | None:
    """What the engine's --model-path gets: hf:// and file:// become plain names/paths."""
    if not source:
        return None
    if source.startswith("hf://"):
        return source[len("hf://"):]
    if source.startswith("file://"):
        return source[len("file://"):]
    return source


def uses_char_tokenizer(model_source: str | None, tokenizer: str | None = None) -> bool:
    """Whether the job's tokenizer is kuberl's builtin char tokenizer (not an HF one).

    The tokenizer defaults to the model source, so builtin://tiny brings the char
    tokenizer; an explicit builtin:// tokenizer means it too. SGLang cannot load that
    tokenizer, so the server runs with --skip-tokenizer-init and the agent sends token ids.
    """
    where = tokenizer or model_source or ""
    return where.startswith("builtin://")


def engine_server_args(spec: RolloutPoolSpec, model_path: str | None, *, skip_tokenizer_init: bool) -> list[str]:
    """The SGLang server's command-line arguments for one rollout pod."""
    engine = spec.engine
    args = ["--model-path", model_path] if model_path else []
    args += ["--host", "0.0.0.0", "--port", str(ENGINE_PORT), "--tp-size", str(engine.tensor_parallel_size),
             "--mem-fraction-static", str(engine.mem_fraction_static)]
    if spec.gpus_per_replica == 0:
        args += list(SGLANG_CPU_FLAGS)
    if skip_tokenizer_init:
        args.append("--skip-tokenizer-init")
    if engine.context_length:
        args += ["--context-length", str(engine.context_length)]
    if engine.max_running_requests:
        args += ["--max-running-requests", str(engine.max_running_requests)]
    if engine.fp8:
        args += ["--quantization", "fp8"]
    return args + list(engine.args or [])


def _initial_model_container(model_source: str, image: str, settings: OperatorSettings) -> dict[str, Any]:
    """Writes a builtin:// model's initial weights (HF layout) into the scratch dir before the server starts."""
    script = ("import sys; from kuberl.workloads.spec import ModelSpec; from kuberl.workloads.policy.tiny.model import save_pretrained; "
              "from kuberl.workloads.policy.tiny.train import initial_model; save_pretrained(initial_model(ModelSpec(source=sys.argv[1])), sys.argv[2])")
    return {
        "name": "initial-model",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-c", script, model_source, ENGINE_INITIAL_MODEL_DIR],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "volumeMounts": [{"name": ENGINE_SCRATCH_VOLUME, "mountPath": ENGINE_SCRATCH_DIR}],
    }


def rollout_deployment(
    pool: RolloutPool,
    namespace: str,
    settings: OperatorSettings,
    *,
    bound_job: str | None = None,
    model_source: str | None = None,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Rollout pods: an SGLang server plus the kuberl agent, or the agent alone with the in-process torch engine.

    The agent reads the bound job's ConfigMap; a pool not yet bound waits for it (the
    mount is optional so the pod still starts and reports not-ready). With SGLang, both
    containers mount one scratch emptyDir: the agent writes each fetched weight version
    there and the server loads it from there; the agent reaches the server on loopback.
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
    containers = []
    init_containers = []
    agent_mounts = [CONFIG_VOLUME_MOUNT]
    scratch_mount = {"name": ENGINE_SCRATCH_VOLUME, "mountPath": ENGINE_SCRATCH_DIR}
    agent_image = agent.image or settings.workload_image
    if engine.type == "sglang":
        agent_env[ENGINE_SCRATCH_ENV] = ENGINE_SCRATCH_DIR
        agent_mounts.append(scratch_mount)
        cpu = spec.gpus_per_replica == 0
        path = _model_path(model_source)
        if model_source and model_source.startswith("builtin://"):
            init_containers.append(_initial_model_container(model_source, agent_image, settings))
            path = ENGINE_INITIAL_MODEL_DIR
        engine_env = {"PYTHONUNBUFFERED": "1"}
        if cpu:
            engine_env.update({"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": SGLANG_CPU_KERNELS_DIR})
        containers.append({
            "name": "engine",
            "image": engine.image or (settings.sglang_cpu_image if cpu else settings.sglang_image),
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["python3", "-m", "sglang.launch_server"],
            "args": engine_server_args(spec, path, skip_tokenizer_init=uses_char_tokenizer(model_source, tokenizer)),
            "env": env_list(engine_env),
            "ports": [{"name": "engine", "containerPort": ENGINE_PORT}],
            "resources": container_resources(spec.resources, spec.gpus_per_replica),
            # Loading weights takes minutes: the startup probe holds the other two off until
            # /health answers. Ready = it can generate; alive = the HTTP server answers.
            "startupProbe": {"httpGet": {"path": "/health", "port": ENGINE_PORT}, "periodSeconds": 10, "failureThreshold": 180},
            "readinessProbe": {"httpGet": {"path": "/health_generate", "port": ENGINE_PORT}, "periodSeconds": 10, "timeoutSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/health", "port": ENGINE_PORT}, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, scratch_mount],
        })
        agent_resources: dict[str, Any] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
    else:
        # The torch engine runs inside the agent process: the agent gets the pool's resources.
        agent_resources = container_resources(spec.resources, spec.gpus_per_replica)
    containers.append({
        "name": "agent",
        "image": agent_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "kuberl.workloads.rollout"],
        "env": env_list(agent_env) + downward_env() + user_env(agent.env),
        "ports": [{"name": "metrics", "containerPort": WORKLOAD_METRICS_PORT}],
        "resources": agent_resources,
        "volumeMounts": agent_mounts,
    })
    volumes = [config_volume(bound_job, optional=True) if bound_job else {"name": "kuberl-config", "emptyDir": {}}]
    if engine.type == "sglang":
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        volumes.append({"name": ENGINE_SCRATCH_VOLUME, "emptyDir": {}})
    pod_spec: dict[str, Any] = {"containers": containers, "volumes": volumes}
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if settings.workload_service_account:
        pod_spec["serviceAccountName"] = settings.workload_service_account
    apply_placement(pod_spec, spec.placement)
    deployment = deployment_manifest(name, namespace, labels, selector, replicas, pod_spec)
    # Engines take minutes to load weights: surge new pods rather than drop capacity.
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    return deployment


def rollout_service(pool: RolloutPool, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    name = pool.metadata["name"]
    selector = pool_selector(name)
    ports = [{"name": "metrics", "port": WORKLOAD_METRICS_PORT, "targetPort": WORKLOAD_METRICS_PORT}]
    if pool.spec.engine.type == "sglang":
        ports.insert(0, {"name": "engine", "port": ENGINE_PORT, "targetPort": ENGINE_PORT})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, namespace, {**common_labels(name, ROLE_ROLLOUT, settings), **selector}),
        "spec": {"selector": selector, "ports": ports},
    }
