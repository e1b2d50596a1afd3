"""`kuberl render <manifest>...`: every child the operator would create, as multi-document YAML.

The manifests are validated (and defaulted) as the API server would, then rendered by the
builders the controllers use (`children.render`), so what this prints is what a job creates:
its ConfigMap with the rendered WorkloadConfig, the trainer pods and their Service, the
RolloutPool with its Deployment and Service, the AgentEnv Deployment, Service and NetworkPolicy.
"""

from __future__ import annotations

import argparse
import sys

import yaml


class _PlainDumper(yaml.SafeDumper):
    """No &anchors/*aliases: the output is for people and for `kubectl apply -f -`."""

    def ignore_aliases(self, data):
        return True


def cmd_render(args: argparse.Namespace) -> int:
    from kuberl.operator.children.render import RenderError, render
    from kuberl.operator.cli.manifest_files import ManifestFileError, clip, load_documents
    from kuberl.operator.schema.validation import ManifestInvalid, validate, validation_errors
    from kuberl.operator.settings import OperatorSettings

    docs = []
    seen: dict[tuple[str, str, str], str] = {}  # kind, namespace, name -> where it was defined
    for name in args.files:
        try:
            loaded = load_documents(name)
        except ManifestFileError as e:
            print(f"kuberl render: {e}", file=sys.stderr)
            return 1
        for doc in loaded:
            if not isinstance(doc.body, dict):
                print(f"kuberl render: {doc.where}: {validation_errors(doc.body)[0].message}", file=sys.stderr)
                return 1
            try:
                valid = validate(doc.body)
            except ManifestInvalid as e:
                print("\n".join(clip(line) for line in f"kuberl render: {doc.where}: {e}".splitlines()),
                      file=sys.stderr)
                return 1
            meta = valid["metadata"]
            if not meta.get("name"):
                print(f"kuberl render: {doc.where}: {valid['kind']} with generateName {meta.get('generateName')!r} "
                      "cannot be rendered: its name is only chosen when the API server creates it; set metadata.name",
                      file=sys.stderr)
                return 1
            key = (valid["kind"], meta.get("namespace") or args.namespace, meta["name"])
            if key in seen:
                # The API server keeps one object per kind, namespace and name: applying both
                # files would silently replace the first with the second.
                print(f"kuberl render: {key[0]} {key[1]}/{key[2]} is defined twice: in {seen[key]} and in {doc.where}",
                      file=sys.stderr)
                return 1
            seen[key] = doc.where
            docs.append(valid)
    try:
        children = render(docs, OperatorSettings.from_env(), namespace=args.namespace, check=not args.no_check)
    except RenderError as e:
        print(f"kuberl render: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.dump_all(children, Dumper=_PlainDumper, sort_keys=False, width=120))
    return 0


def add_render_command(sub) -> None:
    p = sub.add_parser("render", help="print every object the operator would create for these manifests (YAML)")
    p.add_argument("files", nargs="+", help="RLJob / RolloutPool / AgentEnv manifests")
    p.add_argument("-n", "--namespace", default="default",
                   help="namespace of manifests that name none (default: default)")
    p.add_argument("--no-check", action="store_true",
                   help="print the children even of a job the operator would refuse (its semantic checks; "
                        "without this flag such a job is an error naming the field)")
    p.set_defaults(func=cmd_render)
