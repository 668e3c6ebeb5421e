"""The main job: STAC search -> lazy load -> predict -> Zarr (+ STAC item, quick-look).

Local or in the cloud: the bands may be local files or ``http(s)://`` / ``s3://`` assets
(``gdal=``, ``aws=``), the weights a local file or a URL each worker fetches into its own cache
(``weights_storage_options=``), and the store a folder or an object-store URL
(``storage_options=``), so the job runs on Dask workers that share no disk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr

from .data.load import load
from .data.search import search
from .engine.predict import DEFAULT_CHUNK, predict
from .errors import NoItemsError
from .models.registry import get

if TYPE_CHECKING:
    from .outputs.zarr import ZarrWriteSummary

__all__ = ["MaskJob", "dask_client", "mask_items", "run_search_and_mask"]


@dataclass
class MaskJob:
    """What :func:`mask_items` produced."""

    store: Path | str
    """The store: a local path, or the URL of a store in an object store."""
    item_path: Path | str | None
    mask: xr.DataArray
    data: xr.Dataset
    source_items: list[str] = field(default_factory=list)
    storage_options: dict[str, Any] = field(default_factory=dict)
    """The storage options the store was written with (to open it again)."""
    summary: ZarrWriteSummary | None = None
    """What the write did (chunks written and skipped, time steps appended)."""


def _store_ref(store: str | os.PathLike[str]) -> Path | str:
    """A URL stays a string (``Path`` would fold ``s3://`` into ``s3:/``); a path is a Path."""
    text = os.fspath(store)
    return text if "://" in text and not text.startswith("file://") else Path(text)


def mask_items(
    items: Sequence[Any],
    store: str | os.PathLike[str],
    *,
    model: str = "ukis-6b-l1c",
    weights: str | os.PathLike[str] | None = None,
    resolution: float = 10.0,
    chunk_size: int = DEFAULT_CHUNK,
    bbox: Sequence[float] | None = None,
    crs: str | int | None = None,
    resampling: str = "bilinear",
    device: str = "auto",
    precision: str = "float32",
    invalid: str = "nodata",
    multiscales: Sequence[int] = (),
    progress: bool = False,
    write_stac_item: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    weights_storage_options: Mapping[str, Any] | None = None,
    gdal: Mapping[str, Any] | None = None,
    aws: Mapping[str, Any] | None = None,
    read_retries: int = 2,
    strict: bool = False,
    read_resolution: str | float | None = None,
) -> MaskJob:
    """Mask STAC items with ``model`` and write the masks to a Zarr store, chunk by chunk.

    The bands the model needs are loaded lazily (:func:`xcloud.load`), masked with
    :func:`xcloud.predict` and written with :func:`xcloud.outputs.to_zarr`, which is
    resumable and appends new dates along ``time``; a STAC item describing the store is
    written beside it. Runs on the active Dask client when there is one. Pixels where only
    some bands have data (scene and swath edges, where 10, 20 and 60 m bands end at
    different places) are no data unless ``invalid="raise"``.

    Parameters
    ----------
    items, store
        The STAC items; the store: a local folder or an object-store URL
        (``s3://bucket/masks.zarr``, ``gs://``, ``az://``, ``memory://``).
    model, weights
        The model and its weights: default (``None``), a local file, or a URL
        (``https://...``, ``s3://...``, optionally ``#sha256=<hex>``) that each process
        running the model fetches once into its own cache, hash-checked.
    resolution, chunk_size, bbox, crs, resampling
        The output grid, as in :func:`xcloud.load`.
    device, precision, invalid
        As in :func:`xcloud.predict`.
    multiscales, progress
        As in :func:`xcloud.outputs.to_zarr`.
    write_stac_item
        Also write a STAC item describing the store beside it.
    storage_options
        fsspec options of the store's filesystem (endpoint, credentials, anonymous), for the
        store and its STAC item.
    weights_storage_options
        fsspec options for a ``weights`` URL, registered in this process and on every worker
        of the current Dask client (:func:`xcloud.engine.cluster.share_weights_options`).
    gdal, aws, read_retries, strict
        How the bands are read (:func:`xcloud.load`): GDAL options and AWS session
        arguments for ``http(s)://`` and ``s3://`` assets (``aws={"requester_pays": True}``,
        ``aws={"aws_unsigned": True}``), re-reads of a failed network read, and whether an
        unreadable asset is an error or no data plus a read-failure record.
    read_resolution
        ``"model"``: read the bands on the model's grid, from the files' overviews or JPEG
        2000 resolution levels, and bring the mask to the output grid
        (:mod:`xcloud.engine.model_grid`); ``"data"``: read them at ``resolution``; a number:
        a model grid of that pixel size in metres. Default: the model's
        (:data:`xcloud.engine.model_grid.DEFAULT_READ_RESOLUTION`: ``"model"`` where its masks
        agreed with the full-resolution read on >= 99.5 % of the real scene's pixels).

    Returns
    -------
    MaskJob
        The store, the STAC item's path or URL, the lazy mask and data, the source item ids.
    """
    from .engine.cluster import share_weights_options
    from .models.fetch import is_weights_url
    from .outputs.stac import write_item
    from .outputs.zarr import to_zarr

    if weights_storage_options:
        if not is_weights_url(weights):
            raise ValueError(f"weights_storage_options= is for weights given as a URL "
                             f"(s3://..., https://...); weights={weights!r}")
        share_weights_options(str(weights).partition("#")[0], weights_storage_options)
    info = get(model).info
    data = load(items, bands=list(info.bands), resolution=resolution, chunks=chunk_size,
                bbox=bbox, crs=crs, resampling=resampling, gdal=gdal, aws=aws,
                read_retries=read_retries, strict=strict)
    options: dict[str, Any] = {"model": model, "device": device, "precision": precision,
                               "invalid": invalid,
                               "weights": None if weights is None else os.fspath(weights)}
    mask = predict(data, read_resolution=read_resolution, **options)
    options = dict(storage_options or {})
    summary = to_zarr(mask, store, multiscales=tuple(multiscales), progress=progress,
                      storage_options=options or None)
    item_path = (write_item(store, source_items=items, storage_options=options or None)
                 if write_stac_item else None)
    return MaskJob(_store_ref(store), item_path, mask, data, list(data.attrs["source_items"]),
                   options, summary)


def run_search_and_mask(
    url: str,
    store: str | os.PathLike[str],
    *,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    query: Mapping[str, Any] | None = None,
    filter: Mapping[str, Any] | None = None,  # noqa: A002  (the STAC API's name)
    max_items: int | None = None,
    crop: bool = True,
    **options: Any,
) -> MaskJob:
    """:func:`xcloud.search` then :func:`mask_items`; the output covers ``bbox`` if ``crop``,
    else the items' full extent."""
    items = search(url, collections=collections, bbox=bbox, datetime=datetime, query=query,
                   filter=filter, max_items=max_items)
    if len(items) == 0:
        raise NoItemsError(
            f"no items at {url} for collections={collections}, bbox={bbox}, "
            f"datetime={datetime}, query={query}, filter={filter}; widen the search"
        )
    return mask_items(list(items), store, bbox=bbox if crop else None, **options)


@contextlib.contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None,
                threads_per_worker: int = 1) -> Iterator[Any]:
    """A distributed client on a new local cluster (``workers``) or at ``scheduler``; else
    nothing (Dask's threaded scheduler)."""
    if workers is None and scheduler is None:
        yield None
        return
    from ._optional import import_optional

    distributed = import_optional("distributed", extra="distributed")
    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    from .engine.cluster import local_cluster

    with local_cluster(n_workers=workers, threads_per_worker=threads_per_worker) as cluster, \
            distributed.Client(cluster) as client:
        yield client
