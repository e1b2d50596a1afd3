"""The audit of a `kuberl run` output directory: the trainer's ledger plus the agents' weight loads."""

from __future__ import annotations

import json
from pathlib import Path

from kuberl.workloads.trainer.ledger import LEDGER_FILE, Audit, audit, read_ledger


def weight_loads(logs_dir: Path) -> list[tuple[int, str]]:
    """(version, manifest digest) of every "weights swapped" line in the rollout agents' JSON logs."""
    loads = []
    for path in sorted(logs_dir.glob("rollout-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"weights swapped"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            loads.append((int(entry["version"]), str(entry.get("digest", ""))))
    return loads


def audit_run(output: Path) -> Audit:
    """Replay ``output``'s ledger against the versions its agents loaded (`trainer.ledger.audit`)."""
    return audit(read_ledger(output / LEDGER_FILE), weight_loads(output / "logs"))
