"""Operator-wide kopf settings, and cleanup at shutdown."""

from __future__ import annotations

from typing import Any

import kopf

from kuberl.operator.adapters import metrics
from kuberl.operator.api.constants import (
    FINALIZER,
    KOPF_ANNOTATION_PREFIX,
    KOPF_DIFFBASE_KEY,
)
from kuberl.operator.controllers.runtime import RT, stop_timer_threads
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    # kopf hands start-up handlers every index (empty now, filled before any resource
    # handler runs): reconciles read pods, Deployments and the rest from them.
    RT.watched.bind(kwargs)
    # Progress and diff-base in annotations under our own prefix: our CRDs' status schema
    # is structural, so kopf's default status.kopf field would be pruned by the server.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_ANNOTATION_PREFIX,
                                                                            key=KOPF_DIFFBASE_KEY)
    settings.persistence.finalizer = FINALIZER
    settings.posting.reporting_component = "kuberl-operator"
    settings.posting.level = 20  # INFO: our Events, not kopf's per-handler chatter
    settings.posting.loggers = False
    settings.execution.max_workers = RT.settings.executor_threads
    settings.peering.lifetime = RT.settings.peering_lifetime_s
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    metrics.serve(RT.settings.metrics_port)
    log.info("operator configured", settings={k: v for k, v in vars(RT.settings).items() if k != "extra_labels"})


@kopf.on.cleanup()
def shutdown(**_: Any) -> None:
    stop_timer_threads()
    if RT._nats is not None:
        RT._nats.close()
