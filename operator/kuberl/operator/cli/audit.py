"""`kuberl audit`: replay a job's ledger and say whether anything was lost or done twice."""

from __future__ import annotations

import argparse
import json
import sys

from kuberl.operator.local.audit import audit_files
from kuberl.workloads.observe.uploads import RunFiles


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        report = audit_files(RunFiles(args.location, args.endpoint, args.region))
    except LookupError as e:
        print(f"kuberl audit: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1))
    bad = {k: v for k, v in report.zeros().items() if v}
    if bad:
        print(f"kuberl audit: must be zero: {bad}", file=sys.stderr)
        return 1
    return 0


def add_audit_command(sub) -> None:
    p = sub.add_parser("audit",
                       help="replay a decoupled job's ledger: prompts, groups, steps and versions lost or done twice")
    p.add_argument("location", help="the job's run files: a `kuberl run` output directory, or <checkpoint uri>/run "
                                    "(s3://bucket/<namespace>/<job>/checkpoints/run for a job in a cluster)")
    p.add_argument("--endpoint", help="S3 endpoint URL for an s3:// location (credentials: the usual AWS_* variables)")
    p.add_argument("--region", default=None)
    p.set_defaults(func=cmd_audit)
