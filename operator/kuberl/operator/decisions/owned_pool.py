"""What a job does to the RolloutPool it owns when the pool differs from its template. Pure.

The job's `spec.rollout.template` is the pool's spec, as a Deployment's template is its
ReplicaSet's. Replicas are the one field someone else may set:

* autoscaling on: the autoscaler owns the count, and a `kubectl scale` takes effect until
  the autoscaler's next decision (as with a HorizontalPodAutoscaler), within min/max;
* autoscaling off: the template's `replicas` is the count. A hand-made scale is undone, and
  the user is told where to change it: a Warning Event on the job and on the pool. A changed
  template count is carried over silently (the last one carried is kept in an annotation, so
  the two cases can be told apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kuberl.operator.api.constants import TEMPLATE_REPLICAS_ANNOTATION
from kuberl.operator.api.rolloutpool import RolloutPoolSpec

SCALE_UNDONE = "ReplicasSetByJob"


@dataclass(frozen=True)
class PoolUpdate:
    spec: dict[str, Any] | None  # the spec to write, None when the pool's is right
    annotations: dict[str, str] | None  # annotations to write, None when unchanged
    warning: str | None  # why a hand-made scale was undone


def owned_pool_update(live: dict[str, Any], template: dict[str, Any], job: str) -> PoolUpdate:
    """``live`` is the pool as read, ``template`` the pool the job renders."""
    live_spec = live.get("spec") or {}
    parsed = RolloutPoolSpec.model_validate(live_spec)  # the API's defaults, from its model
    want = dict(template["spec"])
    warning = None
    if parsed.autoscaling.enabled:
        want["replicas"] = parsed.replicas
    else:
        carried = ((live.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_REPLICAS_ANNOTATION)
        scaled_to = live_spec.get("replicas")
        if carried == str(want.get("replicas")) and scaled_to != want.get("replicas"):
            name = (live.get("metadata") or {}).get("name")
            warning = (f"RolloutPool {name} belongs to RLJob {job}, whose spec.rollout.template.replicas "
                       f"({want.get('replicas')}) sets its replicas: the scale to {scaled_to} is undone. Change "
                       "spec.rollout.template.replicas on the RLJob, or set spec.rollout.template.autoscaling.enabled "
                       "to let the pool's count move")
    annotation = {TEMPLATE_REPLICAS_ANNOTATION: str(template["spec"].get("replicas"))}
    live_annotations = (live.get("metadata") or {}).get("annotations") or {}
    return PoolUpdate(
        spec=want if live_spec != want else None,
        annotations=annotation if any(live_annotations.get(k) != v for k, v in annotation.items()) else None,
        warning=warning,
    )
