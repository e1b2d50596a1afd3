"""`kuberl validate`: check manifests offline, as the API server would."""

from __future__ import annotations

import argparse
import sys


def cmd_validate(args: argparse.Namespace) -> int:
    from kuberl.operator.cli.manifest_files import ManifestFileError, clip, load_documents
    from kuberl.operator.schema.validation import validation_errors

    failed = 0
    for name in args.files:
        try:
            docs = load_documents(name)
        except ManifestFileError as e:
            failed += 1
            print(f"kuberl validate: {e}", file=sys.stderr)
            continue
        for doc in docs:
            body = doc.body
            errors = validation_errors(body)
            meta = body.get("metadata") if isinstance(body, dict) else None
            label = (f"{doc.where}: {body.get('kind')}/{meta.get('name') if isinstance(meta, dict) else None}"
                     if isinstance(body, dict) else doc.where)
            if errors:
                failed += 1
                print(f"{clip(label)}: invalid", file=sys.stderr)
                for e in errors:
                    print(f"  {clip(str(e))}", file=sys.stderr)
            else:
                print(f"{clip(label)}: valid")
    return 1 if failed else 0
