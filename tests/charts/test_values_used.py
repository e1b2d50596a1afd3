"""Every key in values.yaml reaches a template.

A value nothing reads is a setting that silently does nothing. A leaf counts as read when
a template names its path (`.Values.a.b`, or `$x.b` after `$x := .Values.a`), or renders a
parent of it whole (`toYaml`/`toJson` of the parent, or `with` the parent and `toYaml .`
inside). A value can also reach a template and still do nothing: operator.natsUrl became
KUBERL_NATS_URL, which no code read; so every variable the operator's container gets must
be read by the operator's code.
"""

from __future__ import annotations

import re

import yaml

from tests.charts.test_chart import CHART, REPO, STACK_VALUES, helm, render  # noqa: F401  (helm: the fixture)

PATH = r"((?:\.[A-Za-z_][A-Za-z0-9_]*)+)"
REF = re.compile(r"\.Values" + PATH)
ALIAS = re.compile(r"(\$[A-Za-z_][A-Za-z0-9_]*)\s*:?=\s*\$?\.Values" + PATH)

# Keys no template may read, each with the reason. Keep it short.
UNREAD_BY_DESIGN: dict[str, str] = {}


def leaves(values: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += leaves(value, (*prefix, key))
        else:
            out.append((*prefix, key))
    return out


def expand_aliases(text: str) -> str:
    """`$n.size` -> `.Values.stack.nats.size` where the last `$n :=` before it was `.Values.stack.nats`."""
    assignments = [(m.start(), m.group(1), m.group(2)) for m in ALIAS.finditer(text)]

    def resolve(m: re.Match) -> str:
        before = [path for pos, var, path in assignments if var == m.group(1) and pos < m.start()]
        return f".Values{before[-1]}{m.group(2)}" if before else m.group(0)

    return re.sub(r"(\$[A-Za-z_][A-Za-z0-9_]*)" + PATH, resolve, text)


def references(text: str) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """(paths named, paths rendered whole) in one template's text."""
    text = expand_aliases(text)
    named = {tuple(m.group(1).strip(".").split(".")) for m in REF.finditer(text)}
    whole = set()
    for m in REF.finditer(text):
        path = tuple(m.group(1).strip(".").split("."))
        before, after = text[max(0, m.start() - 40):m.start()], text[m.end():m.end() + 300]
        if (re.search(r"(toYaml|toJson|toPrettyJson)\s+\(?\$?$", before) or re.match(r"\s*\|\s*(toYaml|toJson)", after)
                or (re.search(r"with\s+\$?$", before) and re.match(r"\s*\}\}(?:(?!\{\{-?\s*end).)*toYaml \.", after, re.S))):
            whole.add(path)
    return named, whole


def test_every_value_is_read_by_some_template():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    named, whole = set(), set()
    for path in sorted((CHART / "templates").iterdir()):
        n, w = references(path.read_text())
        named |= n
        whole |= w
    assert named, "no .Values reference found: the scan is broken"

    def read(leaf: tuple[str, ...]) -> bool:
        return leaf in named or any(leaf[:i] in whole for i in range(1, len(leaf)))

    unread = [".".join(leaf) for leaf in leaves(values) if not read(leaf) and ".".join(leaf) not in UNREAD_BY_DESIGN]
    assert not unread, f"values.yaml keys no template reads (remove them, or read them): {unread}"
    stale = [k for k in UNREAD_BY_DESIGN if tuple(k.split(".")) not in leaves(values) or read(tuple(k.split(".")))]
    assert not stale, f"UNREAD_BY_DESIGN lists keys that are gone or read now: {stale}"


def test_the_scan_sees_aliases_and_whole_renders_and_misses_nothing_else():
    """The scanner itself: a path only aliased, only rendered whole, or only mentioned."""
    text = ('{{- $n := .Values.stack.nats -}}{{ $n.storage.size }}\n'
            '{{ toYaml .Values.resources | nindent 2 }}\n'
            '{{- with .Values.podLabels }}\n{{- toYaml . | nindent 8 }}\n{{- end }}\n'
            '{{- with .Values.affinity }}{{ .foo }}{{- end }}{{ toYaml .other }}\n')
    named, whole = references(text)
    assert ("stack", "nats", "storage", "size") in named
    assert ("resources",) in whole and ("podLabels",) in whole
    assert ("affinity",) in named and ("affinity",) not in whole  # with, but nothing rendered whole inside
    assert ("stack", "nats") not in whole


def test_every_variable_the_operator_container_gets_is_read_by_its_code(helm):  # noqa: F811
    """The second half of a value's way: the environment variable it becomes must be one
    the operator (or the workloads package it imports: logging, credentials) reads."""
    sources = "\n".join(p.read_text() for root in (REPO / "operator" / "kuberl", REPO / "workloads" / "kuberl")
                        for p in root.rglob("*.py"))
    read = set(re.findall(r"""["'](KUBERL_[A-Z0-9_]+)["']""", sources))
    for args in ([], ["-f", str(STACK_VALUES)], ["--set", "operator.watchNamespaces={team-a}"]):
        deployment = next(d for d in render(helm, *args) if d["kind"] == "Deployment")
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        names = {e["name"] for e in container.get("env", [])}
        assert {"KUBERL_WORKLOAD_IMAGE", "KUBERL_LOG_LEVEL"} <= names  # the scan sees the env
        assert names <= read, f"set by the chart, read by no code: {sorted(names - read)}"
