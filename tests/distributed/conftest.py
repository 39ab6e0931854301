"""The local Ray cluster that the pipeline tests start ends with them: its daemons would share the machine's
cores with the rest of the suite."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package", autouse=True)
def ray_cluster_ends_with_the_package():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
