"""The dependency rules of the layout, read from the source (every import, also those
inside functions), followed transitively through kuberl's own modules:

* workloads never import the operator;
* the operator reaches the workloads only through the contract modules (the shared spec
  and config, the operator-facing half of the buffer, logging, process helpers);
* nothing the operator imports pulls torch (the operator image installs no torch);
* pure modules (api, naming, children, decisions, schema, the rl algorithm, the buffer's
  names/records/staleness/state) import no kopf, no Kubernetes client and no NATS;
* decisions import no children (the builders follow the decisions, not the reverse);
* the benches import nothing from the tests but the real-node harness.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"kuberl.operator": ROOT / "operator/kuberl/operator",
           "kuberl.workloads": ROOT / "workloads/kuberl/workloads"}

OPERATOR_MAY_IMPORT = {
    "kuberl.workloads.spec", "kuberl.workloads.config", "kuberl.workloads.logs", "kuberl.workloads.localproc",
    "kuberl.workloads.buffer.names", "kuberl.workloads.buffer.admin", "kuberl.workloads.buffer.state",
    "kuberl.workloads.buffer.kv",
    # The shape of a NATS credentials Secret, read the same way by the operator and the pods.
    "kuberl.workloads.buffer.auth",
    # The audit's inputs (`local.audit`, `kuberl audit`): the trainer's ledger, the agents'
    # weight-load records, and the run-files location (s3:// or a directory) they are in.
    "kuberl.workloads.trainer.ledger", "kuberl.workloads.rollout.load_records", "kuberl.workloads.observe.uploads",
    # The metrics.jsonl schema `kuberl run` reports and plots from.
    "kuberl.workloads.observe.step_row",
    # The flags every SGLang server is started with: the operator's engine containers too.
    "kuberl.workloads.engines.sglang.flags",
    # /proc/<pid>/stat, parsed once (localproc's process accounting).
    "kuberl.workloads.procstat",
}
PURE = ["kuberl.operator.api", "kuberl.operator.naming", "kuberl.operator.children", "kuberl.operator.decisions",
        "kuberl.workloads.observe.step_row", "kuberl.workloads.engines.sglang.flags",
        "kuberl.operator.schema", "kuberl.workloads.rl", "kuberl.workloads.spec", "kuberl.workloads.buffer.names",
        "kuberl.workloads.buffer.records", "kuberl.workloads.buffer.staleness", "kuberl.workloads.buffer.state"]
IO_LIBRARIES = {"kopf", "kubernetes", "nats"}


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in SOURCES.items():
        for path in root.rglob("*.py"):
            if "cpu_kernels" in path.parts:
                continue  # data for the SGLang server's interpreter, not part of the package
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module `module` imports (absolute names; `from x import y` yields x.y when that is a module)."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return frozenset(found)


def _own(name: str) -> str | None:
    """The kuberl module an import names (a package import counts as its __init__)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@cache
def closure(module: str) -> frozenset[str]:
    """Every name imported by `module` or by any kuberl module it reaches."""
    seen, todo, names = {module}, [module], set()
    while todo:
        for name in imports_of(todo.pop()):
            names.add(name)
            own = _own(name) if name.startswith("kuberl.") else None
            for m in filter(None, {own, *(p for p in _parents(own) if p in MODULES)} if own else ()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
    return frozenset(names | seen)


def _parents(module: str):
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def test_workloads_never_import_the_operator():
    bad = {
        m: sorted(n for n in imports_of(m) if n.startswith("kuberl.operator"))
        for m in MODULES
        if m.startswith("kuberl.workloads")
    }
    assert not {m: n for m, n in bad.items() if n}


def test_the_operator_reaches_the_workloads_only_through_the_contract():
    bad = {}
    for m in MODULES:
        if m.startswith("kuberl.operator"):
            direct = {_own(n) for n in imports_of(m) if n.startswith("kuberl.workloads")}
            if extra := sorted(x for x in direct - OPERATOR_MAY_IMPORT if x not in ("kuberl.workloads",)):
                bad[m] = extra
    assert not bad, f"operator modules importing workload internals: {bad}"


def test_nothing_the_operator_imports_pulls_torch():
    heavy = {"torch", "safetensors", "megatron", "transformers", "sglang", "aiohttp", "httpx"}
    bad = {m: sorted({n.split(".")[0] for n in closure(m)} & heavy) for m in MODULES if m.startswith("kuberl.operator")}
    assert not {m: n for m, n in bad.items() if n}


def test_pure_modules_do_no_io():
    pure = [m for m in MODULES if any(m == p or m.startswith(p + ".") for p in PURE)]
    assert len(pure) > 20  # the rule covers the folders it names
    bad = {m: sorted({n.split(".")[0] for n in closure(m)} & IO_LIBRARIES) for m in pure}
    assert not {m: n for m, n in bad.items() if n}


def test_the_rules_see_imports_inside_functions():
    # The CLI imports the controllers (kopf) lazily, inside a function: the closure sees it.
    assert "kopf" in {n.split(".")[0] for n in closure("kuberl.operator.cli.run_operator")}
    assert "torch" in {n.split(".")[0] for n in closure("kuberl.workloads.trainer.__main__")}


def test_the_proc_reader_the_audit_loads_on_the_system_python_imports_only_the_standard_library():
    imports = {name.split(".")[0] for name in imports_of("kuberl.workloads.procstat")}
    assert imports and imports <= set(sys.stdlib_module_names) | {"__future__"}, imports


def test_decisions_import_no_children():
    """Decisions say what should be; children say how it is written as Kubernetes objects,
    from those decisions: never the other way round."""
    decisions = [m for m in MODULES if m.startswith("kuberl.operator.decisions")]
    assert decisions
    for module in decisions:
        children = {m for m in closure(module) if m.startswith("kuberl.operator.children")}
        assert not children, (module, children)


def _reaches(module: str, package: str) -> set[str]:
    return {m for m in closure(module) if m == package or m.startswith(package + ".")}


def test_the_trainer_and_the_rollout_agent_share_episodes_not_each_other():
    """Episodes (kuberl.workloads.episodes) are what both run; neither side imports the other."""
    for side, other in (("kuberl.workloads.trainer", "kuberl.workloads.rollout"),
                        ("kuberl.workloads.rollout", "kuberl.workloads.trainer")):
        modules = [m for m in MODULES if m.startswith(side)]
        assert modules
        for module in modules:
            assert not _reaches(module, other), (module, _reaches(module, other))


def test_weights_and_the_engine_interface_know_no_policy():
    """Weights move and engines load tensors by HF name; which backend trained them is the policy's business."""
    modules = [m for m in MODULES if m.startswith("kuberl.workloads.weights")] + ["kuberl.workloads.engines.base"]
    for module in modules:
        assert not _reaches(module, "kuberl.workloads.policy"), (module, _reaches(module, "kuberl.workloads.policy"))


# The benches start servers from the package (`kuberl.operator.local.servers`), as `kuberl
# run` does; only the chaos drill on a real node borrows the suite's node harness.
BENCH_MAY_IMPORT_FROM_TESTS = {"chaos_cluster.py": {"tests.support.fixtures_node"}}


def test_the_benches_import_nothing_from_the_tests_but_the_real_node_harness():
    for path in sorted((ROOT / "bench").glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
        from_tests = {m for m in found if m == "tests" or m.startswith("tests.")}
        assert from_tests <= BENCH_MAY_IMPORT_FROM_TESTS.get(path.name, set()), (path.name, from_tests)
