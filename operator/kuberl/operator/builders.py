"""Child manifests of RLJob, RolloutPool and AgentEnv: pure functions, no I/O.

Every name is derived from the parent's name, so a reconcile that is interrupted and run
again computes the same objects and `create` answers 409 instead of making a duplicate.
Owner references are not set here: the handlers adopt what they create (kopf.adopt), so
these functions stay usable without a live parent body (tests, `kuberl run`, the bench).
"""

from __future__ import annotations

from typing import Any

from kuberl.operator.api import AgentEnv, RLJob, RolloutPool
from kuberl.operator.api.common import Placement, ResourceRequirements
from kuberl.operator.api.rolloutpool import RolloutPoolSpec
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, config_from_rljob

# Label keys. app.kubernetes.io/* for tools that know them; kuberl.io/* for our selectors.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "kuberl.io/job"
LABEL_ROLE = "kuberl.io/role"
LABEL_POOL = "kuberl.io/rollout-pool"
LABEL_ENV = "kuberl.io/agent-env"
LABEL_REPLICA_INDEX = "kuberl.io/replica-index"
LABEL_GANG_GENERATION = "kuberl.io/gang-generation"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
POD_GROUP_SIZE_ANNOTATION = "kuberl.io/pod-group-size"
# Set by an owning RLJob on its pool and envs while it is suspended or finished: the
# Deployment then runs zero pods, and the user's replica count is left untouched.
PAUSED_ANNOTATION = "kuberl.io/paused"

ROLE_TRAINER = "trainer"
ROLE_ROLLOUT = "rollout"
ROLE_AGENTENV = "agentenv"

RENDEZVOUS_PORT = 29500
ENGINE_PORT = 30000
# The emptyDir both containers of an SGLang rollout pod mount: the agent writes fetched
# weight versions there and the server loads them (/update_weights_from_disk).
ENGINE_SCRATCH_DIR = "/var/run/kuberl/engine"
ENGINE_SCRATCH_ENV = "KUBERL_ENGINE_SCRATCH"
ENGINE_SCRATCH_VOLUME = "engine-scratch"
# Where a builtin:// model's initial weights are written (by an init container) for the server.
ENGINE_INITIAL_MODEL_DIR = f"{ENGINE_SCRATCH_DIR}/initial"
# SGLang on CPU imports two sgl_kernel ops; kuberl's pure-torch stand-in sits here in the CPU engine image.
SGLANG_CPU_KERNELS_DIR = "/opt/kuberl/sglang_cpu"
SGLANG_CPU_FLAGS = ("--device", "cpu", "--attention-backend", "torch_native", "--sampling-backend", "pytorch")
AGENT_METRICS_PORT = 9400
CONFIG_MOUNT_DIR = DEFAULT_CONFIG_PATH.rsplit("/", 1)[0]
CONFIG_KEY = DEFAULT_CONFIG_PATH.rsplit("/", 1)[1]
GPU_RESOURCE = "nvidia.com/gpu"
NON_ROOT_UID = 65532  # the conventional "nonroot" user of distroless images

API_VERSION = "kuberl.io/v1alpha1"


# ---------------------------------------------------------------------------------------
# Names


def config_map_name(job: str) -> str:
    return f"{job}-config"


def trainer_service_name(job: str) -> str:
    return f"{job}-trainer"


def trainer_pod_name(job: str, index: int) -> str:
    return f"{job}-trainer-{index}"


def inline_pool_name(job: str) -> str:
    return f"{job}-rollout"


def pool_name_for(job: RLJob) -> str | None:
    """The RolloutPool a job generates with; None in colocated mode."""
    name = job.metadata["name"]
    if job.spec.mode == "colocated":
        return None
    rollout = job.spec.rollout
    if rollout is not None and rollout.pool_ref:
        return rollout.pool_ref
    return inline_pool_name(name)


def pool_selector(pool: str) -> dict[str, str]:
    return {LABEL_ROLE: ROLE_ROLLOUT, LABEL_POOL: pool}


def env_selector(env: str) -> dict[str, str]:
    return {LABEL_ROLE: ROLE_AGENTENV, LABEL_ENV: env}


def trainer_selector(job: str) -> dict[str, str]:
    return {LABEL_JOB: job, LABEL_ROLE: ROLE_TRAINER}


def selector_string(labels: dict[str, str]) -> str:
    """The label selector in the string form the scale subresource and kubectl use."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def engine_url() -> str:
    """Where a rollout agent reaches its pod's SGLang server (same pod: loopback)."""
    return f"http://127.0.0.1:{ENGINE_PORT}"


def agent_env_url(namespace: str, env: str, port: int) -> str:
    return f"http://{env}.{namespace}.svc:{port}"


# ---------------------------------------------------------------------------------------
# Shared pieces


def common_labels(instance: str, component: str, settings: OperatorSettings) -> dict[str, str]:
    return {
        LABEL_NAME: "kuberl",
        LABEL_INSTANCE: instance,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "kuberl",
        LABEL_MANAGED_BY: "kuberl-operator",
        **settings.extra_labels,
    }


def _quantity(value: int | str) -> str:
    return str(value)


def container_resources(resources: ResourceRequirements | None, gpus: int) -> dict[str, Any]:
    """Resources of a container; GPUs go to limits (extended resources need them) and requests."""
    out: dict[str, dict[str, str]] = {}
    if resources is not None:
        if resources.requests:
            out["requests"] = {k: _quantity(v) for k, v in resources.requests.items()}
        if resources.limits:
            out["limits"] = {k: _quantity(v) for k, v in resources.limits.items()}
    if gpus > 0:
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
        out.setdefault("requests", {})[GPU_RESOURCE] = str(gpus)
    return out


def apply_placement(pod_spec: dict[str, Any], placement: Placement | None, scheduler_name: str | None = None) -> None:
    if placement is not None:
        if placement.node_selector:
            pod_spec["nodeSelector"] = dict(placement.node_selector)
        if placement.tolerations:
            pod_spec["tolerations"] = [t.to_wire() for t in placement.tolerations]
        if placement.affinity:
            pod_spec["affinity"] = dict(placement.affinity)
        if placement.priority_class_name:
            pod_spec["priorityClassName"] = placement.priority_class_name
    if scheduler_name:
        pod_spec["schedulerName"] = scheduler_name


def _env(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": str(v)} for k, v in pairs.items()]


def _downward_env() -> list[dict[str, Any]]:
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]


def _user_env(env) -> list[dict[str, Any]]:
    return [e.to_wire() for e in env or []]


def _config_volume(job: str, optional: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"name": config_map_name(job)}
    if optional:
        source["optional"] = True
    return {"name": "kuberl-config", "configMap": source}


CONFIG_VOLUME_MOUNT = {"name": "kuberl-config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}


def _meta(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


# ---------------------------------------------------------------------------------------
# RLJob children


def job_config_map(
    job: RLJob,
    namespace: str,
    settings: OperatorSettings,
    *,
    pool_spec: dict[str, Any] | None = None,
    agent_env_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ConfigMap every process of the job mounts at /etc/kuberl (the rendered WorkloadConfig)."""
    name = job.metadata["name"]
    config = config_from_rljob(
        namespace,
        name,
        job.spec.to_wire(),
        uid=job.metadata.get("uid"),
        pool_spec=pool_spec,
        agent_env_urls=agent_env_urls,
    )
    if config.rollout.engine == "sglang" and not config.rollout.engine_url:
        # Every rollout pod runs its own server next to the agent: loopback is the same URL in all of them.
        config = config.model_copy(update={"rollout": config.rollout.model_copy(update={"engine_url": engine_url()})})
    labels = {**common_labels(name, "config", settings), LABEL_JOB: name}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(config_map_name(name), namespace, labels),
        "data": {CONFIG_KEY: config.dump()},
    }


def trainer_service(job: RLJob, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Headless Service giving each trainer pod a stable DNS name for torch.distributed rendezvous."""
    name = job.metadata["name"]
    labels = {**common_labels(name, ROLE_TRAINER, settings), **trainer_selector(name)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(trainer_service_name(name), namespace, labels),
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve each other before any is Ready (they become ready together).
            "publishNotReadyAddresses": True,
            "selector": trainer_selector(name),
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def trainer_ranks(job: RLJob) -> tuple[int, int]:
    """(processes per pod, world size): one rank per GPU, or one per pod on CPU."""
    per_pod = max(job.spec.trainer.gpus_per_replica, 1)
    return per_pod, per_pod * job.spec.trainer.replicas


def trainer_pod(job: RLJob, namespace: str, index: int, generation: int, settings: OperatorSettings) -> dict[str, Any]:
    """Rank `index` of the trainer gang; `generation` (= restarts so far) tells gangs apart."""
    name = job.metadata["name"]
    spec = job.spec
    trainer = spec.trainer
    pod_name = trainer_pod_name(name, index)
    service = trainer_service_name(name)
    nproc, world = trainer_ranks(job)
    labels = {
        **common_labels(name, ROLE_TRAINER, settings),
        **trainer_selector(name),
        LABEL_REPLICA_INDEX: str(index),
        LABEL_GANG_GENERATION: str(generation),
    }
    annotations: dict[str, str] = {}
    scheduling = spec.scheduling
    group = f"{name}-trainer-g{generation}"
    if scheduling.pod_group.enabled:
        labels[scheduling.pod_group.label_key] = group
        annotations[POD_GROUP_SIZE_ANNOTATION] = str(trainer.replicas)
    if scheduling.queue_name:
        # Kueue's plain-pod integration admits the gang as one workload: the group name
        # label plus the total count annotation make it all-or-nothing.
        labels[KUEUE_QUEUE_LABEL] = scheduling.queue_name
        labels[KUEUE_POD_GROUP_LABEL] = group
        annotations[KUEUE_POD_GROUP_COUNT] = str(trainer.replicas)
    env = _env(
        {
            CONFIG_ENV: DEFAULT_CONFIG_PATH,
            "KUBERL_ROLE": ROLE_TRAINER,
            "KUBERL_JOB": name,
            "KUBERL_MODE": spec.mode,
            "KUBERL_GANG_GENERATION": str(generation),
            "MASTER_ADDR": f"{trainer_pod_name(name, 0)}.{service}.{namespace}.svc",
            "MASTER_PORT": str(RENDEZVOUS_PORT),
            "NNODES": str(trainer.replicas),
            "NODE_RANK": str(index),
            "NPROC_PER_NODE": str(nproc),
            "WORLD_SIZE": str(world),
        }
    )
    image = trainer.image or (settings.trainer_image if trainer.backend == "megatron" else settings.workload_image)
    container = {
        "name": ROLE_TRAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "kuberl.workloads.trainer"],
        "env": env + _downward_env() + _user_env(trainer.env),
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
        "resources": container_resources(trainer.resources, trainer.gpus_per_replica),
        "volumeMounts": [CONFIG_VOLUME_MOUNT, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod_spec: dict[str, Any] = {
        "hostname": pod_name,
        "subdomain": service,
        # A failed rank fails the gang: the operator restarts all ranks together.
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            _config_volume(name),
            # NCCL and dataloaders use shared memory; the container default (64 MiB) is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if settings.workload_service_account:
        pod_spec["serviceAccountName"] = settings.workload_service_account
    apply_placement(pod_spec, trainer.placement, scheduling.scheduler_name)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(pod_name, namespace, labels, annotations), "spec": pod_spec}


def trainer_gang(job: RLJob, namespace: str, generation: int, settings: OperatorSettings) -> list[dict[str, Any]]:
    return [trainer_pod(job, namespace, i, generation, settings) for i in range(job.spec.trainer.replicas)]


def default_pool_spec(job: RLJob) -> RolloutPoolSpec:
    """The pool a decoupled job gets when it names none: CPU torch engine for torch trainers."""
    if job.spec.trainer.backend == "torch":
        return RolloutPoolSpec.model_validate({"engine": {"type": "torch"}, "gpusPerReplica": 0})
    return RolloutPoolSpec()


def inline_rollout_pool(job: RLJob, namespace: str, settings: OperatorSettings) -> dict[str, Any] | None:
    """The RolloutPool the job owns: its template, or a default one; None when it uses a poolRef or is colocated."""
    if job.spec.mode == "colocated":
        return None
    rollout = job.spec.rollout
    if rollout is not None and rollout.pool_ref:
        return None
    spec = rollout.template if rollout is not None and rollout.template is not None else default_pool_spec(job)
    name = job.metadata["name"]
    labels = {**common_labels(name, ROLE_ROLLOUT, settings), LABEL_JOB: name}
    return {"apiVersion": API_VERSION, "kind": "RolloutPool", "metadata": _meta(inline_pool_name(name), namespace, labels), "spec": spec.to_wire()}


def inline_agent_envs(job: RLJob, namespace: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """AgentEnvs declared inline in the job (owned by it); entries without spec refer to existing ones."""
    name = job.metadata["name"]
    out = []
    for entry in job.spec.agent_envs or []:
        if entry.spec is None:
            continue
        labels = {**common_labels(name, ROLE_AGENTENV, settings), LABEL_JOB: name}
        out.append({"apiVersion": API_VERSION, "kind": "AgentEnv", "metadata": _meta(entry.name, namespace, labels), "spec": entry.spec.to_wire()})
    return out


# ---------------------------------------------------------------------------------------
# RolloutPool children


def _model_path(source: str | None) -> str | None:
    """What the engine's --model-path gets: hf:// and file:// become plain names/paths."""
    if not source:
        return None
    if source.startswith("hf://"):
        return source[len("hf://"):]
    if source.startswith("file://"):
        return source[len("file://"):]
    return source


def is_paused(metadata: dict[str, Any]) -> bool:
    return (metadata.get("annotations") or {}).get(PAUSED_ANNOTATION) == "true"


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
    script = ("import sys; from kuberl.workloads.jobspec import ModelSpec; from kuberl.workloads.models import save_pretrained; "
              "from kuberl.workloads.policy import initial_model; save_pretrained(initial_model(ModelSpec(source=sys.argv[1])), sys.argv[2])")
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
    agent_env = {
        CONFIG_ENV: DEFAULT_CONFIG_PATH,
        "KUBERL_ROLE": ROLE_ROLLOUT,
        "KUBERL_ROLLOUT_POOL": name,
        "KUBERL_ENGINE": engine.type,
        "KUBERL_AGENT_CONCURRENCY": str(agent.concurrency),
        "KUBERL_WEIGHT_SWAP": agent.weight_swap,
    }
    if bound_job:
        agent_env["KUBERL_JOB"] = bound_job
    containers = []
    init_containers = []
    agent_mounts = [CONFIG_VOLUME_MOUNT]
    scratch_mount = {"name": ENGINE_SCRATCH_VOLUME, "mountPath": ENGINE_SCRATCH_DIR}
    agent_image = agent.image or settings.workload_image
    if engine.type == "sglang":
        agent_env["KUBERL_ENGINE_URL"] = engine_url()
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
            "env": _env(engine_env),
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
        "env": _env(agent_env) + _downward_env() + _user_env(agent.env),
        "ports": [{"name": "metrics", "containerPort": AGENT_METRICS_PORT}],
        "resources": agent_resources,
        "volumeMounts": agent_mounts,
    })
    volumes = [_config_volume(bound_job, optional=True) if bound_job else {"name": "kuberl-config", "emptyDir": {}}]
    if engine.type == "sglang":
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        volumes.append({"name": ENGINE_SCRATCH_VOLUME, "emptyDir": {}})
    pod_spec: dict[str, Any] = {"containers": containers, "volumes": volumes}
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if settings.workload_service_account:
        pod_spec["serviceAccountName"] = settings.workload_service_account
    apply_placement(pod_spec, spec.placement)
    deployment = _deployment(name, namespace, labels, selector, replicas, pod_spec)
    # Engines take minutes to load weights: surge new pods rather than drop capacity.
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    return deployment


def _deployment(name: str, namespace: str, labels: dict[str, str], selector: dict[str, str], replicas: int,
                pod_spec: dict[str, Any]) -> dict[str, Any]:
    """An apps/v1 Deployment of `replicas` pods labelled `labels`, selected by `selector`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, labels),
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
    }


def rollout_service(pool: RolloutPool, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    name = pool.metadata["name"]
    selector = pool_selector(name)
    ports = [{"name": "metrics", "port": AGENT_METRICS_PORT, "targetPort": AGENT_METRICS_PORT}]
    if pool.spec.engine.type == "sglang":
        ports.insert(0, {"name": "engine", "port": ENGINE_PORT, "targetPort": ENGINE_PORT})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, {**common_labels(name, ROLE_ROLLOUT, settings), **selector}),
        "spec": {"selector": selector, "ports": ports},
    }


# ---------------------------------------------------------------------------------------
# AgentEnv children


def agent_env_deployment(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """Environment pods, locked down: agents run model-written code in them."""
    name = env.metadata["name"]
    spec = env.spec
    sandbox = spec.sandbox
    selector = env_selector(name)
    labels = {**common_labels(name, ROLE_AGENTENV, settings), **selector}
    replicas = 0 if is_paused(env.metadata) else spec.replicas
    env_vars = {
        "KUBERL_ROLE": ROLE_AGENTENV,
        "KUBERL_ENV_NAME": name,
        "KUBERL_ENV_TASK": spec.task,
        "KUBERL_ENV_PORT": str(spec.port),
        "KUBERL_ENV_CONCURRENCY": str(spec.concurrency_per_replica),
        "KUBERL_EPISODE_TIMEOUT_SECONDS": str(spec.episode_timeout_seconds),
    }
    if spec.latency is not None:
        env_vars.update({
            "KUBERL_ENV_LATENCY_DISTRIBUTION": spec.latency.distribution,
            "KUBERL_ENV_LATENCY_MEDIAN_SECONDS": str(spec.latency.median_seconds),
            "KUBERL_ENV_LATENCY_TAIL": str(spec.latency.tail),
        })
    container: dict[str, Any] = {
        "name": "env",
        "image": spec.image or settings.workload_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(spec.command) if spec.command else ["python", "-m", "kuberl.workloads.agentenv"],
        "env": _env(env_vars) + _user_env(spec.env),
        "ports": [{"name": "http", "containerPort": spec.port}],
        "resources": container_resources(spec.resources, 0),
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": spec.port}, "periodSeconds": 5},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": sandbox.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
        },
    }
    if spec.args:
        container["args"] = list(spec.args)
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if sandbox.run_as_non_root:
        # runAsNonRoot alone rejects images whose USER is root; give them a non-root uid.
        pod_security.update({"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID, "fsGroup": NON_ROOT_UID})
    volumes = []
    if sandbox.read_only_root_filesystem:
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
        volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}})
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security,
        # Environment code never needs the Kubernetes API; do not hand it a token.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if volumes:
        pod_spec["volumes"] = volumes
    if sandbox.runtime_class_name:
        pod_spec["runtimeClassName"] = sandbox.runtime_class_name
    apply_placement(pod_spec, spec.placement)
    return _deployment(name, namespace, labels, selector, replicas, pod_spec)


def agent_env_service(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    name = env.metadata["name"]
    selector = env_selector(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, {**common_labels(name, ROLE_AGENTENV, settings), **selector}),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": env.spec.port, "targetPort": env.spec.port}]},
    }


def agent_env_network_policy(env: AgentEnv, namespace: str, settings: OperatorSettings) -> dict[str, Any] | None:
    """Deny all egress from the environment pods (no exfiltration, no downloads); None when not asked."""
    if not env.spec.sandbox.deny_egress:
        return None
    name = env.metadata["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(f"{name}-deny-egress", namespace, {**common_labels(name, ROLE_AGENTENV, settings), **env_selector(name)}),
        "spec": {"podSelector": {"matchLabels": env_selector(name)}, "policyTypes": ["Egress"], "egress": []},
    }


def agent_env_children(env: AgentEnv, namespace: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    children = [agent_env_deployment(env, namespace, settings), agent_env_service(env, namespace, settings)]
    policy = agent_env_network_policy(env, namespace, settings)
    if policy is not None:
        children.append(policy)
    return children
