"""The operator's RBAC is exactly what its code calls: derived from the source, compared with the chart.

Every Kubernetes call the operator makes goes through `adapters.kube.Kube` (get, list,
create, patch, delete, request) or is made by kopf for the handlers it registers. The
test walks the operator's source for those calls, resolves each call's (apiVersion, kind)
and subresource, adds what kopf itself needs for the kinds with handlers, and compares the
set of (apiGroup, resource, verb) with the rules the chart renders, both ways: a grant no
code uses fails, and a call no grant allows fails. A call site whose kind it cannot
resolve fails too, naming the site, so a new dynamic call is taught here rather than
silently granted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kuberl.operator.adapters.kube import _PLURALS
from kuberl.operator.adapters.watch_cache import INDEX_IDS
from kuberl.operator.api.constants import API_VERSION
from kuberl.operator.children.render import render as render_children
from kuberl.operator.settings import OperatorSettings
from tests.charts.test_chart import by_kind, helm, render  # noqa: F401  (helm: the fixture)
from tests.support.fixtures_cluster import yaml_documents

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "operator" / "kuberl" / "operator"
CR_KINDS = ("RLJob", "RolloutPool", "AgentEnv")
VERBS = {"get": ("get",), "list": ("list",), "patch": ("patch",), "delete": ("delete",),
         # create-or-get: a 409 is answered by reading the existing object.
         "create": ("create", "get")}


def child_kinds() -> set[tuple[str, str]]:
    docs = [d for f in sorted((REPO / "examples").glob("*.yaml")) for d in yaml_documents(f)]
    return {(c["apiVersion"], c["kind"]) for c in render_children(docs, OperatorSettings(), check=False)}


# Call sites whose kind is a variable, by the function they sit in: what that function is
# called with (read from its callers). ensure/create/ensure_workload take a built child.
DYNAMIC_SITES = {
    "ensure": lambda: child_kinds(),
    "ensure_workload": lambda: {("apps/v1", "Deployment")},
    "_set_paused": lambda: {(API_VERSION, "RolloutPool"), (API_VERSION, "AgentEnv")},
    "current": lambda: {(API_VERSION, k) for k in CR_KINDS},
    # the children asserted whole (and patched with their manifest digest)
    "ensure_asserted": lambda: {("v1", "ConfigMap"), ("v1", "Service"), ("networking.k8s.io/v1", "NetworkPolicy")},
    "patch_status": lambda: {(API_VERSION, k) for k in CR_KINDS},
    "report_refusal": lambda: {(API_VERSION, k) for k in CR_KINDS},
}


def _constant(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id == "API_VERSION":
        return API_VERSION
    return None


def _resource(api_version: str, kind: str, subresource: str | None) -> tuple[str, str]:
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    plural = _PLURALS[(api_version, kind)]
    return group, f"{plural}/{subresource}" if subresource else plural


def code_needs() -> tuple[set[tuple[str, str, str]], list[str]]:
    needs: set[tuple[str, str, str]] = set()
    unresolved = []
    for path in sorted(OPERATOR.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for call in [n for n in ast.walk(func) if isinstance(n, ast.Call)]:
                f = call.func
                if not (isinstance(f, ast.Attribute) and f.attr in VERBS and isinstance(f.value, ast.Attribute | ast.Name)):
                    continue
                owner = f.value.attr if isinstance(f.value, ast.Attribute) else f.value.id
                if owner != "kube":
                    continue
                sub = next((_constant(k.value) for k in call.keywords if k.arg == "subresource"), None)
                if f.attr == "create":
                    kinds = DYNAMIC_SITES["ensure"]()  # Kube.create(child): whichever child is built
                else:
                    api_version, kind = (_constant(a) for a in call.args[:2])
                    if api_version and kind:
                        kinds = {(api_version, kind)}
                    elif func.name in DYNAMIC_SITES:
                        kinds = DYNAMIC_SITES[func.name]()
                    else:
                        unresolved.append(f"{path.relative_to(REPO)}:{call.lineno} in {func.name}")
                        continue
                for api_version, kind in kinds:
                    group, resource = _resource(api_version, kind, sub)
                    needs |= {(group, resource, verb) for verb in VERBS[f.attr]}
    return needs, unresolved


def kopf_needs(peering: bool, clusterwide: bool) -> set[tuple[str, str, str]]:
    """What kopf does by itself for the handlers we register (kopf's docs, "Operator
    permissions"): list and watch the served kinds, patch them (finalizers, progress and
    diff-base annotations), post Events; with peering, keep-alives in the peering object
    (our start-up code creates it: `adapters.peering.ensure_peering_object`)."""
    needs = {("kuberl.io", plural, verb) for plural in ("rljobs", "rolloutpools", "agentenvs") for verb in ("list", "watch", "patch")}
    needs.add(("", "events", "create"))
    # The watches behind the operator's reads (controllers/watched.py).
    needs |= {(_resource(api_version, kind, None)) + (verb,) for api_version, kind in INDEX_IDS for verb in ("list", "watch")}
    # Children carry blockOwnerDeletion owner references: the API server then checks update on the owner's finalizers.
    needs |= {("kuberl.io", f"{plural}/finalizers", "update") for plural in ("rljobs", "rolloutpools", "agentenvs")}
    if peering:
        kind = "clusterkopfpeerings" if clusterwide else "kopfpeerings"
        needs |= {("kopf.dev", kind, verb) for verb in ("list", "watch", "create", "get", "patch")}
    return needs


def granted(docs: list[dict], kind: str) -> set[tuple[str, str, str]]:
    rules = set()
    for role in by_kind(docs, kind):
        if role["metadata"]["name"].endswith("-discovery"):
            continue  # kopf's cluster-scoped discovery reads (CRDs, namespaces): asserted in test_chart
        for rule in role.get("rules") or []:
            rules |= {(g, r, v) for g in rule.get("apiGroups", []) for r in rule["resources"] for v in rule["verbs"]}
    return rules


def test_every_operator_call_site_is_resolved():
    _, unresolved = code_needs()
    assert not unresolved, f"teach DYNAMIC_SITES which kinds these calls use: {unresolved}"


@pytest.mark.parametrize("read_secrets", [True, False], ids=["readJobSecrets", "noSecrets"])
@pytest.mark.parametrize("scope", ["cluster", "namespaces"])
def test_the_chart_grants_exactly_what_the_code_uses(helm, scope, read_secrets):  # noqa: F811
    args = [] if scope == "cluster" else ["--set", "operator.watchNamespaces={team-a}"]
    docs = render(helm, *args, "--set", f"rbac.readJobSecrets={str(read_secrets).lower()}")
    have = granted(docs, "ClusterRole" if scope == "cluster" else "Role")
    need = code_needs()[0] | kopf_needs(peering=True, clusterwide=scope == "cluster")
    if not read_secrets:  # settings.read_job_secrets off: the only Secret read is skipped
        need.discard(("", "secrets", "get"))
    assert not need - have, f"calls the chart does not allow: {sorted(need - have)}"
    assert not have - need, f"grants no code uses (remove them): {sorted(have - need)}"
