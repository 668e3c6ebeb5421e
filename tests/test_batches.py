"""Batches that carry shared results: every task runs once, results equal one big compute."""

import threading
from collections import Counter

import dask
import dask.array as da
import numpy as np
import pytest

from xcloud.engine.batches import compute_in_batches

SOURCE_CALLS: Counter[float] = Counter()
_LOCK = threading.Lock()


def count_source(block: np.ndarray) -> np.ndarray:
    """Counts how often each source chunk is computed (by its first value); a module-level
    function, so that graphs sent to a distributed scheduler count here too."""
    if block.size:
        with _LOCK:
            SOURCE_CALLS[float(block.flat[0])] += 1
    return block


def smooth(block: np.ndarray) -> np.ndarray:
    return block + np.roll(block, 1, 0)


def _chunk_tasks() -> list:
    values = np.arange(60 * 80, dtype=np.float64).reshape(60, 80)
    source = da.from_array(values, chunks=20).map_blocks(count_source, dtype=np.float64)
    smoothed = source.map_overlap(smooth, depth=3, boundary="reflect")
    return list(smoothed.to_delayed().ravel())


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_shared_sources_run_once_and_results_match(scheduler):
    tasks = _chunk_tasks()
    expected = dask.compute(*tasks, scheduler="sync")
    SOURCE_CALLS.clear()
    done = []
    results = compute_in_batches(tasks, batch_size=2, scheduler=scheduler, on_batch=done.append)
    assert len(results) == len(tasks) == 12
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(SOURCE_CALLS) == 12 and set(SOURCE_CALLS.values()) == {1}
    assert done == [2, 4, 6, 8, 10, 12]


def test_plain_batches_recompute_shared_sources():
    """The control: batch by batch without carrying, halo sources are read again."""
    tasks = _chunk_tasks()
    for first in range(0, len(tasks), 2):
        dask.compute(*tasks[first:first + 2], scheduler="threads")
    assert sum(SOURCE_CALLS.values()) > 12


def test_empty_task_list():
    assert compute_in_batches([], batch_size=4) == []


def test_distributed_runs_all_tasks_in_one_graph():
    distributed = pytest.importorskip("distributed")
    tasks = _chunk_tasks()
    expected = dask.compute(*tasks, scheduler="sync")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        SOURCE_CALLS.clear()
        done = []
        results = compute_in_batches(tasks, batch_size=5, scheduler=client,
                                     on_batch=done.append)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert set(SOURCE_CALLS.values()) == {1} and len(SOURCE_CALLS) == 12
    assert done == [5, 10, 12]
