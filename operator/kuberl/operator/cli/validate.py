"""`kuberl validate`: check manifests offline, as the API server would."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def cmd_validate(args: argparse.Namespace) -> int:
    from kuberl.operator.schema.validation import validation_errors

    failed = 0
    for name in args.files:
        for doc in yaml.safe_load_all(Path(name).read_text()):
            if doc is None:
                continue
            errors = validation_errors(doc)
            label = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if errors:
                failed += 1
                print(f"{label}: invalid", file=sys.stderr)
                for e in errors:
                    print(f"  {e}", file=sys.stderr)
            else:
                print(f"{label}: valid")
    return 1 if failed else 0
