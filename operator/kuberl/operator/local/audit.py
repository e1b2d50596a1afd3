"""The audit of a job's records: the trainer's ledger against the rollout agents' weight loads.

Both live in the job's run-files location (`observe.uploads.RunFiles`): a `kuberl run`
output directory, or ``<checkpoint uri>/run`` on the store for a job in a cluster.
"""

from __future__ import annotations

from pathlib import Path

from kuberl.workloads.observe.uploads import RunFiles
from kuberl.workloads.rollout.load_records import read_loads
from kuberl.workloads.trainer.ledger import Audit, audit, read_ledger


def audit_files(files: RunFiles) -> Audit:
    """Replay the ledger under ``files`` against the versions its agents loaded (`trainer.ledger.audit`)."""
    events = read_ledger(files)
    if not events:
        raise LookupError(f"no ledger under {files.uri}/ledger/ (a decoupled job writes one; is this its run-files "
                          f"location?)")
    return audit(events, read_loads(files))


def audit_run(output: Path) -> Audit:
    """The audit of a `kuberl run` output directory."""
    return audit_files(RunFiles(str(output)))
