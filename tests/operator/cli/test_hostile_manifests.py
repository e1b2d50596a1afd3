"""`kuberl validate` and `kuberl render` on bad and hostile input (issue 29): bounded reading,
what the API server refuses, duplicate objects. The commands run in-process through `main`.

The bounds are measured in bench/bench_hostile_yaml.py (<= 1 s and <= 100 MB per document);
here the refusals and their messages are checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kuberl.operator.cli.main import main
from kuberl.operator.cli.manifest_files import MAX_DEPTH, MAX_EXPANDED_NODES, ManifestFileError, load_documents

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TINY = (ROOT / "examples" / "tiny-cpu.yaml").read_text()


def kuberl(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def billion_laughs(levels: int = 9) -> str:
    """`levels` levels of ten aliases: 10^9 leaves for nine."""
    lines = ["apiVersion: kuberl.io/v1alpha1", "kind: RLJob", "metadata: {name: laughs}", "spec:",
             "  datasets: [&a0 [x, x, x, x, x, x, x, x, x, x],"]
    lines += [f"    &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]," for i in range(1, levels)]
    lines += ["    " + ", ".join([f"*a{levels - 1}"] * 10) + "]"]
    return "\n".join(lines) + "\n"


def with_affinity(blob: str) -> str:
    """The tiny example with `blob` as the trainer's affinity (free-form: the schema keeps it whole)."""
    text = TINY.replace("    gpusPerReplica: 0\n  rollout:",
                        f"    gpusPerReplica: 0\n    placement:\n      affinity: {blob}\n  rollout:", 1)
    assert text != TINY
    return text


def edited(**changes) -> str:
    """The tiny example with top-level (or `metadata`) changes."""
    doc = yaml.safe_load(TINY)
    for key, value in changes.items():
        if key == "metadata":
            doc["metadata"].update(value)
        else:
            doc[key] = value
    return yaml.safe_dump(doc, sort_keys=False)


# -- every example still validates and renders -----------------------------------------------


def test_every_example_validates_and_all_render_together(capsys):
    rc, out, err = kuberl(capsys, "validate", *EXAMPLES)
    assert rc == 0, err
    assert out.count(": valid\n") == len(EXAMPLES)
    # No duplicates among them; the pool the agentic job names is there. The examples for
    # `kuberl run` on one CPU machine are refused on a cluster: render says so, naming the field.
    rc, out, err = kuberl(capsys, "render", *EXAMPLES)
    assert rc == 1 and "would refuse it" in err and "spec.trainer.colocatedEngine" in err and not out
    rc, out, err = kuberl(capsys, "render", "--no-check", *EXAMPLES)
    assert rc == 0, err
    assert len([d for d in yaml.safe_load_all(out) if d]) > len(EXAMPLES)


# -- bounded reading --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "render"])
def test_billion_laughs_is_refused_naming_file_document_and_limit(tmp_path, capsys, command):
    path = write(tmp_path, "laughs.yaml", TINY + "---\n" + billion_laughs())
    rc, _, err = kuberl(capsys, command, path)
    assert rc == 1
    assert f"{path} (document 2): refused: it expands to more than {MAX_EXPANDED_NODES:,} nodes" in err


def test_validate_goes_on_to_the_next_file_after_a_refusal(tmp_path, capsys):
    rc, out, err = kuberl(capsys, "validate", write(tmp_path, "bomb.yaml", billion_laughs()),
                          ROOT / "examples" / "tiny-cpu.yaml")
    assert rc == 1 and "bomb.yaml (document 1): refused" in err
    assert "RLJob/tiny-arithmetic: valid" in out


@pytest.mark.parametrize("text, refusal", [
    (billion_laughs(), f"refused: it expands to more than {MAX_EXPANDED_NODES:,} nodes"),
    ("a: &a [*a]\n", "refused: an alias refers to a node that contains it"),
    ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", f"refused: it nests deeper than {MAX_DEPTH} levels"),
    ("spec: [" + ", ".join(["1"] * (MAX_EXPANDED_NODES + 1)) + "]\n",
     f"refused: it has more than {MAX_EXPANDED_NODES:,} nodes"),
    ("spec: {x: \"" + "a" * (3 * 2**20 + 1) + "\"}\n", "the document is over 3 MiB"),
    ("a: [unclosed\n", "not valid YAML"),
], ids=["laughs", "cycle", "depth", "written-nodes", "size", "syntax"])
def test_the_reader_refuses_naming_file_and_document(tmp_path, text, refusal):
    path = write(tmp_path, "hostile.yaml",
                 "apiVersion: kuberl.io/v1alpha1\nkind: AgentEnv\nmetadata: {name: fine}\nspec: {}\n---\n" + text)
    with pytest.raises(ManifestFileError, match=refusal) as e:
        load_documents(path)
    assert str(e.value).startswith(f"{path} (document 2): ")
    assert "\n" not in str(e.value)


def test_aliases_within_the_bound_are_read_as_usual(tmp_path):
    [doc] = load_documents(write(tmp_path, "ok.yaml", billion_laughs(levels=3)))  # 10^3 expanded items: fine
    assert len(doc.body["spec"]["datasets"]) == 3 + 10  # three anchored lists, then ten aliases


def test_a_few_aliases_of_a_long_string_are_refused_as_over_the_request_limit(tmp_path, capsys):
    # Under the node bound (1,000 copies), but 1,000 MiB once expanded: what the server would be sent.
    s = "a" * 2**20
    blob = f'[&l2 [&l1 [&s "{s}"' + ", *s" * 9 + "]" + ", *l1" * 9 + "]" + ", *l2" * 9 + "]"
    path = write(tmp_path, "strings.yaml", with_affinity(blob))
    rc, _, err = kuberl(capsys, "validate", path)
    assert rc == 1 and "(document 1): refused: it expands to more than 3 MiB, the most the API server accepts" in err


def test_a_large_free_form_field_under_the_bounds_is_accepted(tmp_path, capsys):
    blob = "&a0 {" + ", ".join(f"k{j}: x" for j in range(12)) + "}"  # 4 levels of 12: 45,241 nodes expanded
    for i in range(1, 4):
        blob = f"&a{i} {{" + ", ".join("k0: " + blob if j == 0 else f"k{j}: *a{i - 1}" for j in range(12)) + "}"
    rc, out, err = kuberl(capsys, "validate", write(tmp_path, "big.yaml", with_affinity(blob)))
    assert rc == 0 and out.endswith(": valid\n"), err


@pytest.mark.parametrize("text", [
    "a: " + "[" * 100_000 + "]" * 100_000 + "\n",  # flow: libyaml's own bound, reported as ours
    "a: " + "{b: " * 100_000 + "1" + "}" * 100_000 + "\n",
    "".join(f"{' ' * i}k{i}:\n" for i in range(MAX_DEPTH + 5)) + " " * (MAX_DEPTH + 5) + "x\n",  # block, 105 levels
], ids=["flow-list", "flow-map", "block"])
def test_deep_nesting_is_refused(tmp_path, capsys, text):
    path = write(tmp_path, "deep.yaml", text)
    rc, _, err = kuberl(capsys, "validate", path)
    assert (
        rc == 1
        and err.strip() == f"kuberl validate: {path} (document 1): refused: it nests deeper than {MAX_DEPTH} levels"
    )


def test_a_document_over_3_mib_is_refused_and_the_next_file_still_checked(tmp_path, capsys):
    big = write(tmp_path, "big.yaml",
                TINY.replace("  name: tiny-arithmetic", "  name: big\n  annotations: {blob: " + "x" * 3 * 2**20 + "}"))
    rc, out, err = kuberl(capsys, "validate", big, ROOT / "examples" / "tiny-cpu.yaml")
    assert rc == 1
    assert f"{big} (document 1): the document is over 3 MiB, the most the API server accepts" in err
    assert "RLJob/tiny-arithmetic: valid" in out


def test_a_yaml_error_is_one_line_with_its_line_in_the_file(tmp_path, capsys):
    path = write(tmp_path, "broken.yaml", TINY + "---\nkind: RLJob\nspec: [1, 2\nmetadata: {}\n")
    rc, _, err = kuberl(capsys, "render", path)
    line = TINY.count("\n") + 4  # the parser notices the missing ']' on the line after it
    assert rc == 1
    assert err.startswith(f"kuberl render: {path} (document 2): not valid YAML: did not find expected ',' or ']' "
                          f"(while parsing a flow sequence) at line {line}, column ")
    assert err.count("\n") == 1


def test_documents_are_numbered_as_the_file_divides_them(tmp_path):
    path = write(tmp_path, "docs.yaml",
                 "# a comment belongs to the first document\n---\na: 1\n---\n# just a comment\n---\n"
                                        "b: '--- not a marker'\nc: |\n  ---\n  indented\n")
    assert [(d.index, d.body) for d in load_documents(path)] == [(1, {"a": 1}),
                                                                 (3, {"b": "--- not a marker", "c": "---\nindented\n"})]


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_a_document_that_is_no_mapping_is_an_error_not_a_traceback(tmp_path, capsys, text, kind):
    path = write(tmp_path, "scalar.yaml", text)
    rc, _, err = kuberl(capsys, "validate", path)
    assert rc == 1 and f"a manifest must be a mapping (apiVersion, kind, metadata, spec), not {kind}" in err
    rc, out, err = kuberl(capsys, "render", path)
    assert rc == 1 and not out
    assert (
        err
        == f"kuberl render: {path} (document 1): a manifest must be a mapping (apiVersion, kind, metadata, spec), not "
           f"{kind}\n"
    )


# -- what the API server refuses --------------------------------------------------------------


@pytest.mark.parametrize("changes,message", [
    ({"foo": 1}, 'foo: unknown field "foo"'),
    ({"metadata": {"colour": "red"}}, 'metadata.colour: unknown field "metadata.colour"'),
    ({"metadata": {"name": "Tiny_Arithmetic"}},
     "metadata.name: Invalid value: 'Tiny_Arithmetic': a lowercase RFC 1123 subdomain must consist of"),
    ({"metadata": {"name": "a" * 254}},
     "metadata.name: Invalid value: '" + "a" * 254 + "': must be no more than 253 characters"),
    ({"metadata": {"labels": {"team": "x" * 64}}},
     "metadata.labels: Invalid value: '" + "x" * 64 + "': a valid label must be"),
    ({"metadata": {"annotations": {"note": "x" * 262_141}}},
     "metadata.annotations: Too long: must have at most 262144 bytes"),
], ids=["top-level-field", "metadata-field", "name-syntax", "name-length", "label-value", "annotations-size"])
def test_what_the_api_server_refuses_is_invalid(tmp_path, capsys, changes, message):
    rc, out, err = kuberl(capsys, "validate", write(tmp_path, "job.yaml", edited(**changes)))
    assert rc == 1 and not out, out
    assert message in err


def test_status_is_a_legal_top_level_field_and_annotations_at_the_limit_are_valid(tmp_path, capsys):
    text = edited(status={"phase": "Running"}, metadata={"annotations": {"note": "x" * 262_140}})  # 4 + 262,140 bytes
    rc, out, err = kuberl(capsys, "validate", write(tmp_path, "job.yaml", text))
    assert rc == 0 and out.endswith(": valid\n"), err


def test_a_long_value_is_quoted_by_its_start_and_length(tmp_path, capsys):
    rc, _, err = kuberl(capsys, "validate",
                        write(tmp_path, "long.yaml", TINY.replace("name: tiny-arithmetic", "name: " + "a" * 2**20)))
    assert rc == 1 and "more characters)" in err
    assert max(len(line) for line in err.splitlines()) < 600


# -- duplicate objects ------------------------------------------------------------------------


def test_render_refuses_one_object_defined_in_two_files_naming_both(tmp_path, capsys):
    first = write(tmp_path, "first.yaml", TINY)
    second = write(tmp_path, "second.yaml",
                   (ROOT / "examples" / "agentenv-calculator.yaml").read_text() + "---\n" + TINY)
    rc, out, err = kuberl(capsys, "render", first, second)
    assert rc == 1 and not out
    assert (
        err
        == f"kuberl render: RLJob default/tiny-arithmetic is defined twice: in {first} (document 1) and in {second} "
           f"(document 2)\n"
    )


def test_render_refuses_a_duplicate_within_one_file_and_sees_the_default_namespace(tmp_path, capsys):
    explicit = edited(metadata={"namespace": "team-a"})
    path = write(tmp_path, "both.yaml", TINY + "---\n" + explicit)
    rc, _, err = kuberl(capsys, "render", path, "-n", "team-a")
    assert (
        rc == 1
        and f"RLJob team-a/tiny-arithmetic is defined twice: in {path} (document 1) and in {path} (document 2)" in err
    )
    rc, out, err = kuberl(capsys, "render", path)  # default namespace: two different objects
    assert rc == 0, err
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(out) if d} == {"default", "team-a"}


def test_render_refuses_a_manifest_without_a_name_clearly(tmp_path, capsys):
    path = write(tmp_path, "gen.yaml", TINY.replace("  name: tiny-arithmetic", "  generateName: tiny-"))
    rc, _, err = kuberl(capsys, "render", path)
    assert rc == 1 and "generateName 'tiny-' cannot be rendered" in err and "Traceback" not in err
