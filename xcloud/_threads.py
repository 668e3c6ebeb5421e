"""How many threads one model call may use inside a Dask task (no layer below needs more)."""

from __future__ import annotations

import os

__all__ = ["threads_per_task"]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def threads_per_task() -> int:
    """Threads one model call may use without oversubscribing the CPU.

    In a ``distributed`` worker each Dask thread runs one task: one thread per task. Under the
    local threaded scheduler the cores are shared by ``num_workers`` threads (default: all
    cores). The synchronous scheduler runs one task at a time and gets every core. The
    environment variable ``XCLOUD_NUM_THREADS`` overrides all of this.
    """
    if "XCLOUD_NUM_THREADS" in os.environ:
        return max(1, int(os.environ["XCLOUD_NUM_THREADS"]))
    cores = _cpu_count()
    try:
        from distributed import get_worker

        get_worker()
        return 1
    except (ImportError, ValueError):
        pass
    import dask

    scheduler = dask.config.get("scheduler", None)
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return cores
    workers = dask.config.get("num_workers", None) or cores
    return max(1, cores // int(workers))
