"""Child manifests built from RLJob, RolloutPool and AgentEnv (pure, no cluster)."""

from __future__ import annotations

import pytest
import yaml

from kuberl.operator.api import AgentEnv, RolloutPool
from kuberl.operator.api.constants import (
    ENGINE_PORT,
    LABEL_ENV,
    LABEL_GANG_GENERATION,
    LABEL_JOB,
    LABEL_POOL,
    LABEL_REPLICA_INDEX,
    LABEL_ROLE,
    PAUSED_ANNOTATION,
    POD_GROUP_SIZE_ANNOTATION,
)
from kuberl.operator.children.agentenv import (
    agent_env_deployment,
    agent_env_network_policy,
    inline_agent_envs,
)
from kuberl.operator.children.common import (
    ENGINE_INITIAL_MODEL_DIR,
    ENGINE_SCRATCH_DIR,
    ENGINE_SCRATCH_VOLUME,
    NON_ROOT_UID,
    SGLANG_CPU_KERNELS_DIR,
)
from kuberl.operator.children.rollout import (
    inline_rollout_pool,
    rollout_deployment,
    rollout_service,
)
from kuberl.operator.children.desired import env_children, job_children, pool_children
from kuberl.operator.children.trainer import trainer_pod, trainer_service
from kuberl.operator.children.workload_config import job_config_map, job_workload_config
from kuberl.operator.naming import (
    engine_url,
    pool_name_for,
    pool_selector,
    selector_string,
)
from kuberl.workloads.config import WorkloadConfig
from tests.support.objects import NS, S, example, job, pool, example_spec


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_config_map_holds_the_rendered_workload_config():
    j = job("decoupled-agentic.yaml")
    cm = job_config_map(j, S, job_workload_config(j))
    assert cm["metadata"]["name"] == "agentic-tools-config"
    cfg = WorkloadConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.job.name == "agentic-tools" and cfg.job.namespace == NS and cfg.job.uid == "uid-1"
    assert cfg.max_off_policy_steps == 2 and cfg.agent_envs == {"calculator": "http://calculator.team-a.svc:8080"}
    assert cm["metadata"]["labels"][LABEL_JOB] == "agentic-tools"


def test_config_map_rendering_follows_the_config_not_a_stale_memo():
    # Rendered once per distinct config (children.workload_config._rendered): a job built
    # anew from the same spec gets the same text, a changed spec its own.
    j = job("decoupled-agentic.yaml")
    first = job_config_map(j, S, job_workload_config(j))["data"]["config.yaml"]
    assert first == job_workload_config(j).dump()
    again = job("decoupled-agentic.yaml")
    assert job_config_map(again, S, job_workload_config(again))["data"]["config.yaml"] == first
    changed = job("decoupled-agentic.yaml")
    changed.spec.run_policy.max_steps += 1
    text = job_config_map(changed, S, job_workload_config(changed))["data"]["config.yaml"]
    assert text != first and text == job_workload_config(changed).dump()
    assert WorkloadConfig.model_validate(yaml.safe_load(text)).run_policy.max_steps == j.spec.run_policy.max_steps + 1


def test_trainer_gang_has_one_indexed_pod_per_replica_with_rendezvous_env():
    j = job()
    pods = job_children(j, S).trainer_pods(generation=0)
    assert [p["metadata"]["name"] for p in pods] == ["qwen-math-colocated-trainer-0", "qwen-math-colocated-trainer-1"]
    for i, pod in enumerate(pods):
        spec = pod["spec"]
        c = spec["containers"][0]
        env = env_of(c)
        assert env["MASTER_ADDR"] == f"qwen-math-colocated-trainer-0.qwen-math-colocated-trainer.{NS}.svc"
        assert env["MASTER_PORT"] == "29500" and env["NNODES"] == "2" and env["NODE_RANK"] == str(i)
        assert env["NPROC_PER_NODE"] == "8" and env["WORLD_SIZE"] == "16"
        assert env["KUBERL_CONFIG"] == "/etc/kuberl/config.yaml"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert spec["hostname"] == pod["metadata"]["name"] and spec["subdomain"] == "qwen-math-colocated-trainer"
        assert spec["restartPolicy"] == "Never"
        assert spec["nodeSelector"] == {"kuberl.io/pool": "gpu"}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        labels = pod["metadata"]["labels"]
        assert labels[LABEL_ROLE] == "trainer" and labels[LABEL_JOB] == "qwen-math-colocated"
        assert labels[LABEL_REPLICA_INDEX] == str(i) and labels[LABEL_GANG_GENERATION] == "0"
        assert labels["app.kubernetes.io/name"] == "kuberl" and labels["app.kubernetes.io/component"] == "trainer"
        assert {"name": "kuberl-config", "configMap": {"name": "qwen-math-colocated-config"}} in spec["volumes"]


def test_trainer_generation_label_and_image_by_backend():
    pod = trainer_pod(job(), NS, 0, 3, S)
    assert pod["metadata"]["labels"][LABEL_GANG_GENERATION] == "3"
    # colocated-math generates with SGLang beside the trainer: the image with both.
    assert pod["spec"]["containers"][0]["image"] == S.colocated_image
    in_process = job(trainer={**example_spec("colocated-math.yaml")["trainer"], "colocatedEngine": "torch"})
    assert trainer_pod(in_process, NS, 0, 0, S)["spec"]["containers"][0]["image"] == S.trainer_image
    tiny = job("tiny-cpu.yaml")
    c = trainer_pod(tiny, NS, 0, 0, S)["spec"]["containers"][0]
    assert c["image"] == S.workload_image and "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
    assert env_of(c)["WORLD_SIZE"] == "1"


def test_scheduling_hooks_priority_affinity_and_queue():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    j = job(scheduling={"schedulerName": "volcano", "queueName": "research", "podGroup": {"enabled": True}})
    j.spec.trainer.placement.priority_class_name = "rl-high"
    j.spec.trainer.placement.affinity = affinity
    pod = trainer_pod(j, NS, 1, 2, S)
    spec, labels, ann = pod["spec"], pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert (
        spec["schedulerName"] == "volcano" and spec["priorityClassName"] == "rl-high" and spec["affinity"] == affinity
    )
    assert labels["scheduling.x-k8s.io/pod-group"] == "qwen-math-colocated-trainer-g2"
    assert labels["kueue.x-k8s.io/queue-name"] == "research"
    assert labels["kueue.x-k8s.io/pod-group-name"] == "qwen-math-colocated-trainer-g2"
    assert ann["kueue.x-k8s.io/pod-group-total-count"] == "2" and ann[POD_GROUP_SIZE_ANNOTATION] == "2"


def test_headless_rendezvous_service():
    svc = trainer_service(job(), NS, S)
    assert svc["metadata"]["name"] == "qwen-math-colocated-trainer"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {LABEL_JOB: "qwen-math-colocated", LABEL_ROLE: "trainer"}
    assert svc["spec"]["ports"][0]["port"] == 29500


def test_pool_and_env_ownership_by_mode():
    assert inline_rollout_pool(job(), NS, S) is None  # colocated
    assert pool_name_for(job()) is None
    agentic = job("decoupled-agentic.yaml")
    assert inline_rollout_pool(agentic, NS, S) is None and pool_name_for(agentic) == "shared-sglang"
    envs = inline_agent_envs(agentic, NS, S)
    assert [e["metadata"]["name"] for e in envs] == ["calculator"] and envs[0]["spec"]["task"] == "calculator-tool"
    tiny = job("tiny-cpu.yaml")
    pool = inline_rollout_pool(tiny, NS, S)
    assert pool["metadata"]["name"] == "tiny-arithmetic-rollout" and pool["spec"]["engine"]["type"] == "torch"
    default = job("tiny-cpu.yaml", rollout=None)
    assert inline_rollout_pool(default, NS, S)["spec"]["gpusPerReplica"] == 0


def test_sglang_pool_deployment_has_engine_and_agent():
    d = rollout_deployment(pool(), NS, S, bound_job="agentic-tools", model_source="hf://Qwen/Qwen2.5-7B-Instruct")
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["selector"]["matchLabels"] == {LABEL_ROLE: "rollout", LABEL_POOL: "shared-sglang"}
    tpl = d["spec"]["template"]
    engine, agent = tpl["spec"]["containers"]
    assert engine["name"] == "engine" and engine["image"] == "lmsysorg/sglang:v0.5.23-cu129"
    assert engine["args"][:2] == ["--model-path", "Qwen/Qwen2.5-7B-Instruct"] and "--tp-size" in engine["args"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert engine["readinessProbe"]["exec"]["command"][3] == f"http://127.0.0.1:{ENGINE_PORT}/health_generate"
    assert agent["name"] == "agent" and "KUBERL_ENGINE_URL" not in env_of(agent)  # the engine URL is in the job config
    assert {"name": "kuberl-config",
            "configMap": {"name": "agentic-tools-config", "optional": True}} in tpl["spec"]["volumes"]
    assert tpl["spec"]["nodeSelector"] == {"kuberl.io/pool": "gpu"}
    assert tpl["metadata"]["labels"][LABEL_JOB] == "agentic-tools"


def _containers(d: dict) -> dict[str, dict]:
    return {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_sglang_pod_shares_a_scratch_dir_and_probes_the_server():
    p = pool()  # 2 GPUs per replica, tensorParallelSize 2
    d = rollout_deployment(p, NS, S, bound_job="agentic-tools", model_source="hf://Qwen/Qwen2.5-7B-Instruct")
    tpl = d["spec"]["template"]["spec"]
    c = _containers(d)
    engine, agent = c["engine"], c["agent"]
    scratch = {"name": ENGINE_SCRATCH_VOLUME, "mountPath": ENGINE_SCRATCH_DIR}
    assert {"name": ENGINE_SCRATCH_VOLUME, "emptyDir": {}} in tpl["volumes"]
    assert scratch in engine["volumeMounts"] and scratch in agent["volumeMounts"]
    assert env_of(agent)["KUBERL_ENGINE_SCRATCH"] == ENGINE_SCRATCH_DIR == "/var/run/kuberl/engine"

    args = engine["args"]
    assert engine["command"] == ["python3", "-m", "sglang.launch_server"]
    assert _flag(args, "--model-path") == "Qwen/Qwen2.5-7B-Instruct"
    assert _flag(args, "--port") == str(ENGINE_PORT) and _flag(args, "--host") == "127.0.0.1"
    assert _flag(args, "--tp-size") == str(p.spec.engine.tensor_parallel_size) == "2"
    assert _flag(args, "--mem-fraction-static") == str(p.spec.engine.mem_fraction_static)
    assert "--skip-tokenizer-init" not in args and "--device" not in args  # HF tokenizer, GPU pool
    assert "--sleep-on-idle" in args  # an idle scheduler parks instead of spinning a core
    assert "SGLANG_USE_CPU_ENGINE" not in env_of(engine) and engine["image"] == S.sglang_image
    probes = {k: engine[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {k: p["exec"]["command"][3] for k, p in probes.items()} == {
        "startupProbe": f"http://127.0.0.1:{ENGINE_PORT}/health", "readinessProbe": f"http://127.0.0.1:{ENGINE_PORT}/health_generate",
        "livenessProbe": f"http://127.0.0.1:{ENGINE_PORT}/health"}
    assert [(p["periodSeconds"], p.get("failureThreshold")) for p in probes.values()] == [(10, 180), (10, None),
                                                                                          (15, 4)]
    assert not [p for p in probes.values() if "httpGet" in p]
    assert "initContainers" not in tpl


def test_sglang_cpu_pool_with_the_builtin_model():
    doc = example("shared-rolloutpool.yaml", "RolloutPool")
    doc["spec"].update({"gpusPerReplica": 0,
                        "engine": {"type": "sglang", "tensorParallelSize": 1, "memFractionStatic": 0.1}})
    p = RolloutPool.model_validate(doc)
    d = rollout_deployment(p, NS, S, bound_job="tiny", model_source="builtin://tiny")
    tpl = d["spec"]["template"]["spec"]
    engine, agent = _containers(d)["engine"], _containers(d)["agent"]
    args = engine["args"]
    assert "--skip-tokenizer-init" not in args  # builtin://tiny is a real HF checkpoint, tokenizer included
    assert _flag(args, "--device") == "cpu" and _flag(args, "--attention-backend") == "torch_native"
    assert _flag(args, "--sampling-backend") == "pytorch" and _flag(args, "--mem-fraction-static") == "0.1"
    assert "--sleep-on-idle" in args
    assert env_of(engine)["SGLANG_USE_CPU_ENGINE"] == "1" and env_of(engine)["PYTHONPATH"] == SGLANG_CPU_KERNELS_DIR
    assert engine["image"] == S.sglang_cpu_image and "nvidia.com/gpu" not in str(engine["resources"])
    # builtin:// weights are not a path SGLang can load: an init container writes them into the scratch dir first.
    [init] = tpl["initContainers"]
    assert _flag(args, "--model-path") == ENGINE_INITIAL_MODEL_DIR and init["command"][-2:] == ["builtin://tiny",
                                                                                                ENGINE_INITIAL_MODEL_DIR]
    assert init["image"] == S.workload_image
    assert {"name": ENGINE_SCRATCH_VOLUME, "mountPath": ENGINE_SCRATCH_DIR} in init["volumeMounts"]
    assert env_of(agent)["KUBERL_ENGINE_SCRATCH"] == ENGINE_SCRATCH_DIR
    # s3:// likewise, fetched with the weight store's endpoint and Secret (as the trainer reads it).
    d = rollout_deployment(p, NS, S, bound_job="big", model_source="s3://models/qwen/", weight_store_endpoint="http://minio:9000",
                           weight_store_credentials_secret="s3-keys")
    [init] = d["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][-2:] == ["s3://models/qwen/", ENGINE_INITIAL_MODEL_DIR]
    assert env_of(init)["KUBERL_MODEL_S3_ENDPOINT"] == "http://minio:9000"
    assert env_of(init)["KUBERL_MODEL_CACHE"].startswith(ENGINE_SCRATCH_DIR)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {e["name"] for e in init["env"]}
    d = rollout_deployment(p, NS, S, bound_job="tiny", model_source="file:///models/tiny")
    engine = _containers(d)["engine"]
    assert "--skip-tokenizer-init" not in engine["args"] and _flag(engine["args"], "--model-path") == "/models/tiny"
    assert "initContainers" not in d["spec"]["template"]["spec"]


def test_sglang_job_config_names_the_engine_url():
    j = job("decoupled-agentic.yaml")
    cm = job_config_map(j, S, job_workload_config(j, referenced_pool=pool().spec))  # poolRef: the shared SGLang pool
    cfg = WorkloadConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.rollout.engine == "sglang" and cfg.rollout.engine_url == engine_url()
    tiny = job("tiny-cpu.yaml")
    cfg = WorkloadConfig.model_validate(yaml.safe_load(job_config_map(tiny, S,
                                                                      job_workload_config(tiny))["data"]["config.yaml"]))
    assert cfg.rollout.engine == "torch" and cfg.rollout.engine_url is None


def test_torch_pool_is_agent_only_and_pause_zeroes_replicas():
    tiny = job("tiny-cpu.yaml")
    doc = inline_rollout_pool(tiny, NS, S)
    p = RolloutPool.model_validate(doc)
    d = rollout_deployment(p, NS, S, bound_job="tiny-arithmetic")
    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["agent"]
    assert "KUBERL_ENGINE_URL" not in env_of(containers[0])
    p.metadata["annotations"] = {PAUSED_ANNOTATION: "true"}
    assert rollout_deployment(p, NS, S)["spec"]["replicas"] == 0
    svc = rollout_service(p, NS, S)
    assert [x["name"] for x in svc["spec"]["ports"]] == ["metrics"]


def test_agents_learn_their_node_and_address_and_serve_weights_only_when_they_share_them():
    """weightFetch perNode (the default): the agent knows its node and pod address (downward
    API) and declares the port it serves the node's downloads on; perAgent: none of it."""
    agent = _containers(rollout_deployment(pool(), NS, S, bound_job="agentic-tools"))["agent"]
    refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"] if "fieldRef" in e.get("valueFrom",
                                                                                                            {})}
    assert refs["NODE_NAME"] == "spec.nodeName" and refs["POD_IP"] == "status.podIP"
    assert env_of(agent)["KUBERL_WEIGHT_RELAY_PORT"] == "9410"
    assert {"name": "weights", "containerPort": 9410} in agent["ports"]
    p = pool()
    p.spec.agent.weight_fetch = "perAgent"
    unshared = _containers(rollout_deployment(p, NS, S, bound_job="agentic-tools"))["agent"]
    assert "NODE_NAME" not in env_of(unshared) and "KUBERL_WEIGHT_RELAY_PORT" not in env_of(unshared)
    assert [x["name"] for x in unshared["ports"]] == ["metrics"]
    cfg = job_workload_config(job("decoupled-agentic.yaml"), referenced_pool=p.spec)
    assert cfg.rollout.weight_fetch == "perAgent"


def test_selector_string_matches_deployment_selector():
    assert selector_string(pool_selector("p")) == "kuberl.io/role=rollout,kuberl.io/rollout-pool=p"


def agent_env(**sandbox) -> AgentEnv:
    doc = example("agentenv-calculator.yaml", "AgentEnv")
    doc["spec"]["sandbox"].update(sandbox)
    return AgentEnv.model_validate(doc)


def test_agent_env_is_sandboxed():
    d = agent_env_deployment(agent_env(runtimeClassName="gvisor"), NS, S)
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == NON_ROOT_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["runtimeClassName"] == "gvisor" and pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert (
        sc["allowPrivilegeEscalation"] is False
        and sc["readOnlyRootFilesystem"] is True
        and sc["capabilities"] == {"drop": ["ALL"]}
    )
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert _flag(c["args"], "--task") == "calculator-tool" and _flag(c["args"], "--latency") == "lognormal"
    assert not [e for e in c["env"] if e["name"].startswith("KUBERL_")]  # the settings travel as the server's args
    assert d["spec"]["replicas"] == 2


def test_agent_env_relaxed_sandbox():
    d = agent_env_deployment(agent_env(runAsNonRoot=False, readOnlyRootFilesystem=False, denyEgress=False), NS, S)
    pod = d["spec"]["template"]["spec"]
    assert "runAsNonRoot" not in pod["securityContext"] and "volumes" not in pod
    assert agent_env_network_policy(agent_env(denyEgress=False), NS, S) is None


def test_deny_egress_network_policy():
    np = agent_env_network_policy(agent_env(), NS, S)
    assert np["spec"] == {"podSelector": {"matchLabels": {LABEL_ROLE: "agentenv", LABEL_ENV: "calculator"}},
                          "policyTypes": ["Egress"], "egress": []}
    kinds = [c["kind"] for c in env_children(agent_env(), S).all()]
    assert kinds == ["Deployment", "Service", "NetworkPolicy", "NetworkPolicy"]


@pytest.mark.parametrize("file", ["colocated-math.yaml", "decoupled-agentic.yaml", "tiny-cpu.yaml"])
def test_builders_are_deterministic(file):
    j = job(file)
    assert job_children(j, S).trainer_pods() == job_children(j, S).trainer_pods()
    assert job_config_map(j, S, job_workload_config(j)) == job_config_map(j, S, job_workload_config(j))


# -- what users watch ---------------------------------------------------------------------


def test_trainer_and_rollout_pods_declare_the_metrics_port_their_process_serves():
    from kuberl.operator.api.constants import WORKLOAD_METRICS_PORT
    from kuberl.workloads.config import METRICS_PORT_ENV

    pod = trainer_pod(job(), NS, 0, 0, S)["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": WORKLOAD_METRICS_PORT} in pod["ports"]
    assert {"name": METRICS_PORT_ENV, "value": str(WORKLOAD_METRICS_PORT)} in pod["env"]
    agent = next(c for c in rollout_deployment(pool(), NS,
                                               S)["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    assert {"name": "metrics", "containerPort": WORKLOAD_METRICS_PORT} in agent["ports"]
    assert {"name": METRICS_PORT_ENV, "value": str(WORKLOAD_METRICS_PORT)} in agent["env"]


def test_the_wandb_key_reaches_the_trainer_from_its_secret_never_as_a_literal():
    j = job(observability={"wandb": {"project": "p", "apiKeySecret": {"name": "wandb", "key": "wandb-token"},
                                     "baseUrl": "https://wandb.example.com"}})
    env = trainer_pod(j, NS, 0, 0, S)["spec"]["containers"][0]["env"]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "wandb-token"}}} in env
    assert {"name": "WANDB_BASE_URL", "value": "https://wandb.example.com"} in env
    cfg = job_workload_config(j)
    assert cfg.observability.wandb.project == "p" and "WANDB_API_KEY" not in cfg.dump()
    assert not [e for e in trainer_pod(job(), NS, 0, 0,
                                       S)["spec"]["containers"][0]["env"] if e["name"].startswith("WANDB_")]


def test_the_hub_cache_claim_reaches_every_container_that_reads_hf_sources():
    """model.hubCache: the trainer and rollout pods mount the claim read-only where HF_HUB_CACHE points."""
    from kuberl.operator.children.common import HUB_CACHE_DIR

    spec = example_spec("tiny-megatron-sglang.yaml")
    cached = job("tiny-megatron-sglang.yaml", model={**spec["model"], "source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
                                                    "hubCache": {"claimName": "hf-models", "subPath": "hub"}})
    trainer = trainer_pod(cached, NS, 0, 0, S)["spec"]
    deployment = pool_children(pool("shared-rolloutpool.yaml"), S, cached).deployment
    rollout = deployment["spec"]["template"]["spec"]
    for pod in (trainer, rollout):
        assert {"name": "hf-hub-cache",
                "persistentVolumeClaim": {"claimName": "hf-models", "readOnly": True}} in pod["volumes"]
        containers = [*pod.get("initContainers", []), *pod["containers"]]
        assert len(containers) >= (1 if pod is trainer else 2)
        for c in containers:
            assert {"name": "hf-hub-cache", "mountPath": HUB_CACHE_DIR, "readOnly": True,
                    "subPath": "hub"} in c["volumeMounts"]
            assert env_of(c)["HF_HUB_CACHE"] == HUB_CACHE_DIR and env_of(c)["HF_HUB_OFFLINE"] == "1"
    engine = next(c for c in rollout["containers"] if c["name"] != "agent")
    assert (
        engine["args"][engine["args"].index("--model-path") + 1] == "Qwen/Qwen2.5-0.5B-Instruct"
    )  # resolved in the cache
    plain = trainer_pod(job("tiny-megatron-sglang.yaml"), NS, 0, 0, S)["spec"]
    assert all(v["name"] != "hf-hub-cache" for v in plain["volumes"])
