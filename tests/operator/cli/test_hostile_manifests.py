"""Hostile and malformed manifest files: refused with the file and document named, bounded.

The bounds are measured in bench/bench_hostile_yaml.py (≤ 1 s and ≤ 100 MB per document);
here the refusals and their messages are checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kuberl.operator.cli.manifest_files import MAX_DEPTH, ManifestFileError, load_documents

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def kuberl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kuberl.operator.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def laughs(levels: int = 9) -> str:
    lines = ["apiVersion: kuberl.io/v1alpha1", "kind: RLJob", "metadata: {name: laughs}", "spec:",
             "  datasets: [&a0 [x, x, x, x, x, x, x, x, x, x],"]
    lines += [f"    &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]," for i in range(1, levels)]
    lines += ["    " + ", ".join([f"*a{levels - 1}"] * 10) + "]"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, refusal", [
    (laughs(), "expands to more than 100,000 nodes"),
    ("a: &a [*a]\n", "an alias refers to a node that contains it"),
    ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", f"nests deeper than {MAX_DEPTH} levels"),
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "not valid YAML"),
    ("spec: [" + ", ".join(["1"] * 100_001) + "]\n", "more than 100,000 nodes"),
    ("spec: {x: \"" + "a" * (3 * 2**20 + 1) + "\"}\n", "over 3 MiB"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_hostile_documents_are_refused_naming_file_and_document(tmp_path, text, refusal):
    path = tmp_path / "hostile.yaml"
    path.write_text("apiVersion: kuberl.io/v1alpha1\nkind: AgentEnv\nmetadata: {name: fine}\nspec: {}\n---\n" + text)
    with pytest.raises(ManifestFileError, match=refusal) as e:
        load_documents(path)
    assert str(e.value).startswith(f"{path} (document 2)")


def test_aliases_within_the_bound_are_read_as_usual(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(laughs(levels=3))  # 10^3 expanded items: fine
    [doc] = load_documents(path)
    assert len(doc.body["spec"]["datasets"]) == 3 + 10  # three anchored lists, then ten aliases


def test_documents_are_counted_as_people_count_them(tmp_path):
    path = tmp_path / "three.yaml"
    path.write_text("a: 1\n---\n# just a comment\n---\nb: '--- not a marker'\nc: |\n  ---\n  indented\n")
    docs = load_documents(path)
    assert [(d.index, d.body) for d in docs] == [(1, {"a": 1}), (3, {"b": "--- not a marker", "c": "---\nindented\n"})]


def test_validate_refuses_a_billion_laughs_and_goes_on_to_the_next_file(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs())
    out = kuberl("validate", str(bomb), str(ROOT / "examples/tiny-cpu.yaml"))
    assert out.returncode == 1
    assert f"{bomb} (document 1): refused: it expands to more than 100,000 nodes" in out.stderr
    assert "RLJob/tiny-arithmetic: valid" in out.stdout


def test_validate_says_what_the_api_server_says_about_metadata_and_unknown_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text((ROOT / "examples/agentenv-calculator.yaml").read_text().replace("name: calculator", "name: Calculator_1", 1)
                    + "---\napiVersion: kuberl.io/v1alpha1\nkind: AgentEnv\nmetadata: {name: ok}\nspec: {}\nfoo: 1\n"
                    + "---\napiVersion: kuberl.io/v1alpha1\nkind: AgentEnv\nmetadata:\n  name: ok\n  annotations: {note: "
                    + "x" * 262_200 + "}\nspec: {}\n---\n- a list\n")
    out = kuberl("validate", str(path))
    assert out.returncode == 1
    assert "metadata.name: Invalid value: 'Calculator_1': a lowercase RFC 1123 subdomain" in out.stderr
    assert 'foo: unknown field "foo"' in out.stderr
    assert "metadata.annotations: Too long: must have at most 262144 bytes" in out.stderr
    assert "(document 4): invalid" in out.stderr and "a manifest must be a mapping" in out.stderr


def test_render_refuses_an_object_defined_twice_naming_both_places(tmp_path):
    copy = tmp_path / "again.yaml"
    copy.write_text((ROOT / "examples/shared-rolloutpool.yaml").read_text())
    out = kuberl("render", str(ROOT / "examples/shared-rolloutpool.yaml"), str(copy))
    assert out.returncode == 1 and not out.stdout
    assert (f"RolloutPool default/shared-sglang is defined twice: in {ROOT / 'examples/shared-rolloutpool.yaml'} (document 1) "
            f"and in {copy} (document 1)") in out.stderr
    # The same name in another namespace is another object.
    other = tmp_path / "other-ns.yaml"
    other.write_text(copy.read_text().replace("name: shared-sglang", "name: shared-sglang\n  namespace: team-b", 1))
    assert kuberl("render", str(ROOT / "examples/shared-rolloutpool.yaml"), str(other)).returncode == 0


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_reads_within_the_bounds(path):
    assert load_documents(path)
