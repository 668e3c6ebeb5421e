"""Batches that carry shared results: every task runs once, results equal one big compute."""

import threading
from collections import Counter

import dask
import dask.array as da
import numpy as np
import pytest

from xcloud.engine.batches import compute_in_batches


class SourceCounter:
    """Counts how often each source chunk is computed (by its first value)."""

    def __init__(self):
        self.calls: Counter[float] = Counter()
        self._lock = threading.Lock()

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if block.size:
            with self._lock:
                self.calls[float(block.flat[0])] += 1
        return block


def _chunk_tasks(counter: SourceCounter) -> list:
    values = np.arange(60 * 80, dtype=np.float64).reshape(60, 80)
    source = da.from_array(values, chunks=20).map_blocks(counter, dtype=np.float64)
    smoothed = source.map_overlap(lambda b: b + np.roll(b, 1, 0), depth=3, boundary="reflect")
    return list(smoothed.to_delayed().ravel())


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_shared_sources_run_once_and_results_match(scheduler):
    counter = SourceCounter()
    tasks = _chunk_tasks(counter)
    expected = dask.compute(*tasks, scheduler="sync")
    counter.calls.clear()
    done = []
    results = compute_in_batches(tasks, batch_size=2, scheduler=scheduler, on_batch=done.append)
    assert len(results) == len(tasks) == 12
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(counter.calls) == 12 and set(counter.calls.values()) == {1}
    assert done == [2, 4, 6, 8, 10, 12]


def test_plain_batches_recompute_shared_sources():
    """The control: batch by batch without carrying, halo sources are read again."""
    counter = SourceCounter()
    tasks = _chunk_tasks(counter)
    for first in range(0, len(tasks), 2):
        dask.compute(*tasks[first:first + 2], scheduler="threads")
    assert sum(counter.calls.values()) > 12


def test_empty_task_list():
    assert compute_in_batches([], batch_size=4) == []
