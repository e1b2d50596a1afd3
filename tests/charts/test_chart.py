"""The Helm chart (charts/kuberl) and the container images, without a cluster.

helm lint/template for the default and the laptop-stack values; values.schema.json
refuses bad values naming the field; the rendered RBAC grants nothing broad; the chart's
CRDs are byte-identical to the generated crds/; the Dockerfiles parse and copy only
files that exist and that .dockerignore lets into the build context.
The cluster half (dry-run=server, install, the operator on the chart's ServiceAccount
token) is e2e/test_e2e.py.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kuberl"
STACK_VALUES = CHART / "ci" / "stack-values.yaml"

from e2e.cluster import controlplane
from kuberl.operator.api.constants import ENGINE_PORT
from kuberl.operator.children.common import SGLANG_CPU_KERNELS_DIR

VALUE_SETS = {"default": [], "stack": ["-f", str(STACK_VALUES)]}


@pytest.fixture(scope="session")
def helm() -> Path:
    return controlplane.ensure_built() / "helm"


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def render(helm: Path, *args: str) -> list[dict]:
    proc = run_helm(helm, "template", "kuberl", str(CHART), "--namespace", "kuberl-system", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# -- CRDs: one source of truth ---------------------------------------------------------------

PEERING_CRDS = "kopf.dev_peerings.yaml"


def test_chart_crds_are_the_generated_crds():
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml") if p.name != PEERING_CRDS}
    assert generated, "crds/ is empty"
    stale = sorted(n for n in generated.keys() | in_chart.keys() if generated.get(n) != in_chart.get(n))
    assert not stale, f"charts/kuberl/crds differs from crds/ in {stale}: run charts/kuberl/sync-crds.sh"


def test_chart_ships_the_operators_peering_crds():
    from kuberl.operator.adapters.peering import peering_crds

    shipped = [d for d in yaml.safe_load_all((CHART / "crds" / PEERING_CRDS).read_text()) if d]
    assert shipped == peering_crds(), f"charts/kuberl/crds/{PEERING_CRDS} is stale: run charts/kuberl/sync-crds.sh"


# -- lint and template -----------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(helm: Path, values: str):
    proc = run_helm(helm, "lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_template_renders_valid_objects(helm: Path, values: str):
    docs = render(helm, *VALUE_SETS[values])
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
            "PodDisruptionBudget"} <= kinds
    if values == "stack":
        assert {"StatefulSet", "ServiceMonitor", "ConfigMap", "Job"} <= kinds
        names = {d["metadata"]["name"] for d in by_kind(docs, "Service")}
        # The RLJob default spec.buffer.url is nats://kuberl-nats.kuberl-system:4222.
        assert "kuberl-nats" in names and "kuberl-s3" in names
        for sts in by_kind(docs, "StatefulSet"):
            assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        dash = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
        assert json.loads(dash["data"]["kuberl-operator.json"])["panels"]
    else:
        assert "StatefulSet" not in kinds and "ServiceMonitor" not in kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"], d
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == "kuberl" or d["kind"] == "Job"


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_pod_meets_pod_security_restricted(helm: Path, values: str):
    """The checks of the PSS "restricted" profile, on every pod template the chart renders."""
    for where, spec in _pod_specs(render(helm, *VALUE_SETS[values])):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for vol in spec.get("volumes", []):
            assert "hostPath" not in vol, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, (where, c["name"])
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], (where, c["name"])
            assert not sc.get("privileged"), (where, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (where, c["name"])
            assert c.get("resources", {}).get("requests"), (where, c["name"])
            assert c.get("resources", {}).get("limits", {}).get("memory"), (where, c["name"])


def test_operator_deployment_is_highly_available(helm: Path):
    docs = render(helm)
    dep = by_kind(docs, "Deployment")[0]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["port"] == "health"
    assert c["readinessProbe"]["httpGet"]["port"] == "health"
    env = {e["name"]: e.get("value") for e in c["env"]}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert int(env["KUBERL_METRICS_PORT"]) == ports["metrics"] and int(env["KUBERL_HEALTH_PORT"]) == ports["health"]
    assert c["command"] == ["kuberl", "operator"]
    assert c["args"] == ["--all-namespaces", "--peering=kuberl"], c["args"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
    svc = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1


def test_dashboard_queries_only_metrics_the_operator_exports():
    import re

    from kuberl.operator.adapters import metrics

    exported = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name and hasattr(value, "_type"):
            exported |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    dashboard = json.loads((CHART / "dashboards" / "kuberl-operator.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"\b(kuberl_[a-z_]+)", t["expr"])}
    assert used and used <= exported, f"the dashboard queries metrics the operator does not export: {used - exported}"


def test_job_dashboard_queries_only_metrics_the_workloads_export(helm: Path):
    """The second dashboard (one RLJob: reward, evaluation, throughput, time split, staleness,
    fleet, weight sync) ships in the same ConfigMap and names only series the trainer and
    rollout processes export, under the labels the PodMonitor gives them."""
    import re

    from kuberl.workloads.observe import rollout_metrics, trainer_metrics

    exported = set()
    for module in (trainer_metrics, rollout_metrics):
        for value in vars(module).values():
            name = getattr(value, "_name", None)
            if name and hasattr(value, "_type"):
                exported |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    dashboard = json.loads((CHART / "dashboards" / "kuberl-job.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(kuberl_[a-z_]+)", e)}
    assert len(dashboard["panels"]) >= 10 and used <= exported, f"not exported: {used - exported}"
    assert {"kuberl_trainer_reward", "kuberl_trainer_eval_score", "kuberl_rollout_engine_healthy"} <= used
    assert all('rljob="$rljob"' in e for e in exprs)
    docs = render(helm, "--set", "dashboard.enabled=true")
    dash = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert json.loads(dash["data"]["kuberl-job.json"])["uid"] == "kuberl-job"


def test_pod_monitor_scrapes_the_workload_pods_the_operator_builds(helm: Path):
    from kuberl.operator.children.rollout import rollout_deployment
    from kuberl.operator.children.trainer import trainer_pod
    from tests.support.objects import NS, S, job, pool

    assert not by_kind(render(helm), "PodMonitor")
    [monitor] = by_kind(render(helm, "--set", "metrics.podMonitor.enabled=true"), "PodMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    [endpoint] = spec["podMetricsEndpoints"]
    relabel = {r["targetLabel"]: r["sourceLabels"][0] for r in endpoint["relabelings"]}
    assert relabel["rljob"] == "__meta_kubernetes_pod_label_kuberl_io_job"
    selected = spec["selector"]["matchExpressions"][0]["values"]
    for pod in (trainer_pod(job(), NS, 0, 0, S), rollout_deployment(pool(), NS, S, bound_job="j")["spec"]["template"]):
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), labels
        assert labels["app.kubernetes.io/component"] in selected
        assert any(p.get("name") == endpoint["port"] for c in pod["spec"]["containers"] for p in c.get("ports", []))
    assert "kuberl.io/job" in trainer_pod(job(), NS, 0, 0, S)["metadata"]["labels"]


# -- values.schema.json: bad values fail naming the field ------------------------------------

BAD_VALUES = [
    (["--set", "operator.replicas=0"], "/operator/replicas"),
    (["--set", "operator.logLevel=loud"], "/operator/logLevel"),
    (["--set", "operator.peering.enabled=maybe"], "/operator/peering/enabled"),
    (["--set", "operator.watchNamespaces={Team_A}"], "/operator/watchNamespaces/0"),
    (["--set", "ports.metrics=80"], "/ports/metrics"),
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "resources.limits.memory=lots"], "/resources/limits/memory"),
    (["--set", "stack.nats.storage.size=big"], "/stack/nats/storage/size"),
    (["--set", "stack.s3.buckets={Bad_Bucket}"], "/stack/s3/buckets/0"),
    (["--set", "metrics.serviceMonitor.interval=often"], "/metrics/serviceMonitor/interval"),
    (["--set", "operatr.replicas=2"], "operatr"),  # a typo is an unknown key, not ignored
    (["--set", "ports.metrics=8081"], "ports.metrics and ports.health must differ"),
    # The laptop stack's credentials (a NATS password starts with a letter and has at least 16 characters).
    (["--set", "stack.credentials.nats.password=1234567890123456789"], "/stack/credentials/nats/password"),
    (["--set", "stack.credentials.nats.password=short1A"], "/stack/credentials/nats/password"),
    (["--set", "stack.credentials.s3.secretAccessKey=tooshort"], "/stack/credentials/s3/secretAccessKey"),
    (["--set", "stack.credentials.namespaces={Team_A}"], "/stack/credentials/namespaces/0"),
    (["--set", "stack.networkPolicy.enabled=maybe"], "/stack/networkPolicy/enabled"),
    (["--set", "operator.natsUrl=nats://x:4222"], "natsUrl"),  # removed: nothing read it
]


@pytest.mark.parametrize("args,named", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_bad_values_are_refused_naming_the_field(helm: Path, args: list[str], named: str):
    proc = run_helm(helm, "template", "kuberl", str(CHART), *args)
    assert proc.returncode != 0, f"helm accepted {args}"
    assert named in proc.stderr, proc.stderr


# -- RBAC: least privilege, statically -------------------------------------------------------

FORBIDDEN_RESOURCES = {"nodes", "pods/exec", "pods/attach", "pods/portforward", "serviceaccounts/token",
                       "clusterroles", "clusterrolebindings", "roles", "rolebindings", "serviceaccounts",
                       "certificatesigningrequests", "validatingwebhookconfigurations", "mutatingwebhookconfigurations"}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "approve", "deletecollection"}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rbac_rules_grant_nothing_broad(helm: Path, values: str):
    docs = render(helm, *VALUE_SETS[values])
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            where = f"{role['kind']}/{role['metadata']['name']}: {rule}"
            assert "*" not in rule["apiGroups"] and "*" not in rule["resources"], where
            assert not FORBIDDEN_VERBS & set(rule["verbs"]), where
            assert not FORBIDDEN_RESOURCES & set(rule["resources"]), where
            # Secrets: read by name only (the job's NATS credentials, and whether the Secrets
            # a job names exist); never listed or watched, so no Secret can be discovered.
            if "secrets" in rule["resources"]:
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"], where
            assert "nonResourceURLs" not in rule, where
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit"), binding
    # The only cluster-wide write access is to the kinds the operator serves and their children.
    cluster_writes = {(g, r) for role in by_kind(docs, "ClusterRole") for rule in role["rules"]
                      if set(rule["verbs"]) - {"get", "list", "watch"}
                      for g in rule["apiGroups"] for r in rule["resources"]}
    assert {r for _, r in cluster_writes} <= {
        "rljobs", "rolloutpools", "agentenvs", "rljobs/status", "rolloutpools/status", "agentenvs/status",
        "rolloutpools/scale", "rljobs/finalizers", "rolloutpools/finalizers", "agentenvs/finalizers",
        "pods", "services", "configmaps", "deployments", "networkpolicies", "events",
        "clusterkopfpeerings"}, cluster_writes


def test_watch_namespaces_replaces_the_cluster_role_with_roles(helm: Path):
    docs = render(helm, "--set", "operator.watchNamespaces={team-a,team-b}")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert roles == {("team-a", "kuberl-operator"), ("team-b", "kuberl-operator")}
    for role in by_kind(docs, "Role"):
        assert any("kopfpeerings" in rule["resources"] for rule in role["rules"]), role
    # Left cluster-wide: only read access for discovery (CRDs, namespaces).
    for role in by_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, (role["metadata"]["name"], rule)
    dep = by_kind(docs, "Deployment")[0]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--namespace=team-a", "--namespace=team-b", "--peering=kuberl"], args


def test_peering_disabled_runs_standalone_and_needs_one_replica(helm: Path):
    docs = render(helm, "--set", "operator.peering.enabled=false", "--set", "operator.replicas=1")
    assert by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--all-namespaces", "--standalone"]
    assert not by_kind(docs, "PodDisruptionBudget")
    proc = run_helm(helm, "template", "kuberl", str(CHART), "--set", "operator.peering.enabled=false")
    assert proc.returncode != 0 and "operator.replicas" in proc.stderr, proc.stderr


# -- Dockerfiles -----------------------------------------------------------------------------

DOCKERFILES = [REPO / "operator" / "Dockerfile", REPO / "workloads" / "Dockerfile",
               REPO / "workloads" / "Dockerfile.trainer", REPO / "workloads" / "Dockerfile.rollout",
               REPO / "workloads" / "Dockerfile.sglang-cpu"]


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def dockerignore_allows(rel: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for pat in (REPO / ".dockerignore").read_text().splitlines():
        pat = pat.strip()
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        hit = (pat == "**" or fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/")
               or (pat.startswith("**/") and fnmatch.fnmatch(Path(rel).name, pat[3:])))
        if hit:
            allowed = negate
    return allowed


KNOWN = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_parses_and_copies_what_exists(path: Path):
    instructions = parse_dockerfile(path)
    assert instructions and instructions[0][0] in ("ARG", "FROM"), path
    assert {i for i, _ in instructions} <= KNOWN, {i for i, _ in instructions} - KNOWN
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k] = v
        if word == "FROM":
            image = rest.split()[0]
            for k, v in args.items():
                image = image.replace("${%s}" % k, v)
            assert ":" in image and not image.endswith(":latest"), f"{path}: unpinned base {image}"
        if word == "COPY":
            parts = shlex.split(rest)
            if any(p.startswith("--from=") for p in parts):
                continue
            sources = [p for p in parts if not p.startswith("--")][:-1]
            assert sources, f"{path}: COPY without a source: {rest}"
            for src in sources:
                rel = src.rstrip("/")
                assert (REPO / rel).exists(), f"{path}: COPY source {src} does not exist"
                assert dockerignore_allows(rel), f"{path}: COPY source {src} is excluded by .dockerignore"
        if word == "RUN" and "pip install" in rest:
            assert "--no-cache-dir" in rest, f"{path}: pip install without --no-cache-dir"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path}: the final stage runs as root"


def test_dockerignore_keeps_the_context_small():
    assert not dockerignore_allows(".venv/bin/python")
    assert not dockerignore_allows("tests/test_chart.py")
    assert not dockerignore_allows("operator/kuberl/operator/__pycache__/cli.cpython-311.pyc")
    assert dockerignore_allows("operator/kuberl/operator/cli.py")


def test_cpu_sglang_image_matches_what_the_operator_runs_and_ci_tests():
    """The CPU SGLang image puts the stand-in where the operator's engine container looks
    for it, and installs the very pin file CI's SGLang server is built and tested from."""

    instructions = parse_dockerfile(REPO / "workloads" / "Dockerfile.sglang-cpu")
    copies = [shlex.split(rest) for word, rest in instructions if word == "COPY"]
    assert ["workloads/kuberl/workloads/engines/sglang/cpu_kernels/", SGLANG_CPU_KERNELS_DIR + "/"] in copies
    assert ["e2e/sglang/requirements-cpu.txt", "/tmp/requirements-cpu.txt"] in copies
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert f"PYTHONPATH={SGLANG_CPU_KERNELS_DIR}" in env and "SGLANG_USE_CPU_ENGINE=1" in env
    assert f"EXPOSE {ENGINE_PORT}" in [f"{w} {r}" for w, r in instructions]
