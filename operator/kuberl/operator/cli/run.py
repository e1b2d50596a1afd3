"""`kuberl run`: the command-line front of the local runner."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from kuberl.operator.local.runner import LocalRun
from kuberl.operator.local.supervisor import RunError


def cmd_run(args: argparse.Namespace) -> int:
    run = LocalRun(Path(args.manifest), Path(args.output) if args.output else None, args.nats_url, args.s3_endpoint,
                   args.quiet)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run.run()
    except RunError as e:
        print(f"kuberl run: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kuberl run: interrupted; stopping processes", file=sys.stderr)
        return 130
    finally:
        run.shutdown()


def add_run_command(sub) -> None:
    """Register `kuberl run` on the CLI's subparsers."""
    p = sub.add_parser("run", help="run an RLJob on this machine (starts NATS, S3, trainer, rollout and env processes)")
    p.add_argument("manifest", help="RLJob manifest (YAML)")
    p.add_argument("-o", "--output", help="output directory (default: runs/<job>/)")
    p.add_argument("--nats-url", help="use this NATS server instead of starting one")
    p.add_argument("--s3-endpoint", help="use this S3 endpoint instead of starting SeaweedFS")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
