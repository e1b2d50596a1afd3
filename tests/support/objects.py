"""Test objects built from the examples, validated (and defaulted) as the API server would."""

from __future__ import annotations

from pathlib import Path

import yaml

from kuberl.operator.api import RLJob, RolloutPool
from kuberl.operator.schema.validation import validate
from kuberl.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
S = OperatorSettings()
NS = "team-a"


def example(file: str, kind: str) -> dict:
    for doc in yaml.safe_load_all((EXAMPLES / file).read_text()):
        if doc and doc["kind"] == kind:
            doc = validate(doc)
            doc["metadata"].setdefault("namespace", NS)
            doc["metadata"].setdefault("uid", "uid-1")
            return doc
    raise LookupError(file)


def job(file: str = "colocated-math.yaml", **spec_overrides) -> RLJob:
    doc = example(file, "RLJob")
    doc["spec"].update(spec_overrides)
    return RLJob.model_validate(doc)



def pool(file: str = "shared-rolloutpool.yaml", **meta) -> RolloutPool:
    doc = example(file, "RolloutPool")
    doc["metadata"].update(meta)
    return RolloutPool.model_validate(doc)


