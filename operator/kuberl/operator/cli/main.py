"""The `kuberl` command."""

from __future__ import annotations

import argparse
import sys

from kuberl.operator.cli.audit import add_audit_command
from kuberl.operator.cli.crds import cmd_crds
from kuberl.operator.cli.render import add_render_command
from kuberl.operator.cli.run import add_run_command
from kuberl.operator.cli.run_operator import register as register_operator_command
from kuberl.operator.cli.validate import cmd_validate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuberl", description="Kubernetes-native RL post-training for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="generate crds/ and docs/api.md from the API models")
    crds.add_argument("--check", action="store_true", help="fail if the files on disk are stale instead of writing")
    crds.add_argument("--root", default=".", help="repository root (default: .)")
    crds.set_defaults(func=cmd_crds)

    validate = sub.add_parser("validate", help="validate manifests offline, as the API server would")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)
    add_run_command(sub)
    add_render_command(sub)
    add_audit_command(sub)
    register_operator_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
