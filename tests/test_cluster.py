"""Per-worker model loading and worker environment on a real LocalCluster."""

import os

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import xcloud  # noqa: E402
from xcloud.engine.cluster import local_cluster  # noqa: E402


def _environment():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")


def _threads():
    from xcloud.engine.device import threads_per_task

    return threads_per_task()


@pytest.fixture(scope="module")
def client():
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def test_workers_run_without_malloc_trim_threshold(client):
    environments = client.run(_environment)
    assert len(environments) == 2
    for trim, omp in environments.values():
        assert trim is None and omp == "1"
    assert set(client.run(_threads).values()) == {1}


def test_each_worker_loads_a_model_at_most_once(client, scene):
    mask = scene.chunk({"y": 48, "x": 48}).cloudmask.predict(model="ukis-4b-l1c", halo=8)
    assert mask.data.npartitions == 16
    computed = mask.compute()
    reference = scene.cloudmask.predict(model="ukis-4b-l1c", halo=8, chunk_size=48)
    np.testing.assert_array_equal(computed.values, reference.values)
    counts = client.run(xcloud.load_counts)
    loads = [n for worker in counts.values() for n in worker.values()]
    assert loads and max(loads) == 1
    assert sum(loads) <= 2
