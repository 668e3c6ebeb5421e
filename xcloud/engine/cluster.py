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

Workers that share no disk: the bands are read with GDAL settings that travel with the graph
(:func:`xcloud.load`), and weights given as a URL are fetched by each worker process into its
own cache (:func:`xcloud.models.fetch.fetch_url_weights`). Storage options for such a URL
(an endpoint, anonymous access) reach every worker, also one that joins or restarts later,
through a worker plugin: :func:`share_weights_options`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dask

from ..models.fetch import register_url_options

__all__ = ["WORKER_ENVIRONMENT", "local_cluster", "share_weights_options", "worker_environment"]

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


@functools.cache
def _plugin_class() -> type:
    """``WeightsOptionsPlugin``, built on first use (distributed is optional)."""
    from .._optional import import_optional

    if TYPE_CHECKING:
        from distributed.diagnostics.plugin import WorkerPlugin
    else:
        WorkerPlugin = import_optional("distributed.diagnostics.plugin",
                                       extra="distributed").WorkerPlugin

    class WeightsOptionsPlugin(WorkerPlugin):
        """Registers storage options for weights URLs in every worker process it reaches.

        ``setup`` runs in each worker at registration and in each worker that joins (or is
        restarted by its nanny) later.
        """

        idempotent = False

        def __init__(self, prefix: str, options: Mapping[str, Any]) -> None:
            self.prefix, self.options = prefix, dict(options)
            self.name = f"xcloud-weights-options:{prefix}"

        def setup(self, worker: Any) -> None:
            register_url_options(self.prefix, self.options)

    WeightsOptionsPlugin.__module__ = __name__
    WeightsOptionsPlugin.__qualname__ = "WeightsOptionsPlugin"
    return WeightsOptionsPlugin


def __getattr__(name: str) -> Any:
    if name == "WeightsOptionsPlugin":  # pickle finds the plugin's class by this name
        return _plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def share_weights_options(prefix: str, options: Mapping[str, Any] | None,
                          client: Any = None) -> None:
    """Use ``options`` for weights URLs starting with ``prefix`` here and on every worker.

    In this process (the threaded scheduler runs tasks here) and, when there is a
    ``distributed`` client (``client``, else the default one if any), on each of its workers,
    present and future, through a worker plugin (``WeightsOptionsPlugin``).

    Parameters
    ----------
    prefix
        A URL or the start of URLs, e.g. ``"s3://models/"``.
    options
        fsspec storage options (``{"endpoint_url": ..., "anon": True}``); ``None`` or ``{}``
        forgets them in this process only.
    client
        A ``distributed.Client``; default: the current one, or none.
    """
    register_url_options(prefix, options)
    if not options:
        return
    if client is None:
        try:
            from distributed import default_client
        except ImportError:
            return
        try:
            client = default_client()
        except ValueError:  # no client: the threaded scheduler, this process only
            return
    client.register_plugin(_plugin_class()(prefix, options))
