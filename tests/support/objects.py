"""Test objects built from the examples, validated (and defaulted) as the API server would."""

from __future__ import annotations

from pathlib import Path

import yaml

from kuberl.operator.api import RLJob, RolloutPool
from kuberl.operator.api.constants import API_VERSION
from kuberl.operator.children.workload_config import job_workload_config
from kuberl.operator.schema.validation import validate
from kuberl.operator.settings import OperatorSettings
from kuberl.workloads.config import WorkloadConfig

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




def workload_config_for(spec: dict, name: str = "tiny", namespace: str = "default", **endpoints) -> WorkloadConfig:
    """The WorkloadConfig a job with this (camelCase) spec gets, through the function the
    operator and `kuberl run` use; ``endpoints``: nats_url, s3_endpoint, output_dir, …"""
    doc = validate({"apiVersion": API_VERSION, "kind": "RLJob", "metadata": {"name": name, "namespace": namespace},
                    "spec": spec})
    return job_workload_config(RLJob.model_validate(doc), **endpoints)


def example_spec(file: str) -> dict:
    """The raw spec of the RLJob in an example manifest (no defaults applied)."""
    for doc in yaml.safe_load_all((EXAMPLES / file).read_text()):
        if doc and doc["kind"] == "RLJob":
            return doc["spec"]
    raise LookupError(file)
