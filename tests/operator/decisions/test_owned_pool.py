"""Who sets the replica count of the RolloutPool a job owns."""

from __future__ import annotations

from kuberl.operator.api.constants import TEMPLATE_REPLICAS_ANNOTATION
from kuberl.operator.decisions.owned_pool import owned_pool_update


def pool(replicas: int, autoscaling: bool, carried: int | None = None, **extra) -> dict:
    annotations = {TEMPLATE_REPLICAS_ANNOTATION: str(carried)} if carried is not None else {}
    return {"metadata": {"name": "job-rollout", "annotations": annotations},
            "spec": {"replicas": replicas, "autoscaling": {"enabled": autoscaling}, **extra}}


def test_a_hand_made_scale_is_undone_with_a_warning_naming_the_field_to_change():
    update = owned_pool_update(pool(5, False, carried=2), pool(2, False), "job")
    assert update.spec["replicas"] == 2 and update.annotations is None
    assert "scale to 5 is undone" in update.warning and "spec.rollout.template.replicas" in update.warning


def test_a_changed_template_count_is_carried_over_silently():
    update = owned_pool_update(pool(2, False, carried=2), pool(4, False), "job")
    assert update.spec["replicas"] == 4 and update.warning is None
    assert update.annotations == {TEMPLATE_REPLICAS_ANNOTATION: "4"}


def test_with_autoscaling_the_count_is_the_autoscalers_and_a_scale_takes_effect():
    update = owned_pool_update(pool(5, True, carried=2), pool(2, True), "job")
    assert update.spec is None and update.warning is None


def test_a_template_change_keeps_the_autoscalers_count():
    update = owned_pool_update(pool(5, True, carried=2, maxReplicas=8), pool(2, True, maxReplicas=10), "job")
    assert update.spec == {"replicas": 5, "autoscaling": {"enabled": True},
                           "maxReplicas": 10} and update.warning is None


def test_a_pool_from_before_the_annotation_gets_it_without_a_warning():
    update = owned_pool_update(pool(3, False), pool(2, False), "job")
    assert update.warning is None and update.spec["replicas"] == 2
    assert update.annotations == {TEMPLATE_REPLICAS_ANNOTATION: "2"}


def test_nothing_to_write_when_the_pool_matches():
    update = owned_pool_update(pool(2, False, carried=2), pool(2, False), "job")
    assert (update.spec, update.annotations, update.warning) == (None, None, None)
