"""A ``distributed`` cluster set up for model inference.

distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker. With it, glibc stops
adapting its mmap threshold, so the large, short-lived buffers of a network's forward pass are
mapped and unmapped on every call: each torch call measured about 2.2x slower. xcloud's helper
unsets it (and keeps one BLAS/OpenMP thread per worker thread). On a cluster you start
yourself, do the same in the Dask config of the machine that starts the nannies::

    distributed:
      nanny:
        pre-spawn-environ:
          MALLOC_TRIM_THRESHOLD_: null
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask

__all__ = ["WORKER_ENVIRONMENT", "local_cluster", "worker_environment"]

WORKER_ENVIRONMENT: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": 1,
    "distributed.nanny.pre-spawn-environ.MKL_NUM_THREADS": 1,
    "distributed.nanny.pre-spawn-environ.OPENBLAS_NUM_THREADS": 1,
}


@contextmanager
def worker_environment() -> Iterator[None]:
    """Dask config under which nannies spawn workers that run models at full speed."""
    with dask.config.set(WORKER_ENVIRONMENT):
        yield


def local_cluster(*, n_workers: int | None = None, threads_per_worker: int = 1,
                  processes: bool = True, **kwargs: Any):
    """A ``distributed.LocalCluster`` whose workers run models at full speed.

    One thread per worker process by default: models run one task per process, each with one
    torch thread, which scales across cores without oversubscription.
    """
    from .._optional import import_optional

    distributed = import_optional("distributed", extra="distributed")
    kwargs.setdefault("dashboard_address", None)
    with worker_environment():
        return distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
            **kwargs,
        )
