"""Start-up work `connect()` does ahead on the embedded Ray, checked on the session's real local Ray."""

from __future__ import annotations

import pytest
import ray

pytestmark = pytest.mark.ray


def test_the_autoscaling_coordinator_is_started_ahead_under_the_name_ray_train_asks_for(ray_session):
    """Ray Train's controller blocks on Ray Data's AutoscalingCoordinator before it starts a worker
    (~2 s to start its process on 2 cores). connect() starts it first; the warm-up goes through a Ray
    internal, so this fails when a Ray upgrade moves or renames it (and the warm-up silently stops)."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    from raylm.cluster._connect import _start_autoscaling_coordinator

    _start_autoscaling_coordinator()
    actor = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    # the one Ray Train's controller gets (get_if_exists), not a second one
    assert get_or_create_autoscaling_coordinator()._actor_id == actor._actor_id
