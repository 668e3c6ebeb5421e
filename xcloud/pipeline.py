"""The main job: STAC search -> lazy load -> predict -> Zarr (+ STAC item, quick-look)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from .data.load import load
from .data.search import search
from .engine.predict import DEFAULT_CHUNK, predict
from .errors import NoItemsError
from .models.registry import get

__all__ = ["MaskJob", "dask_client", "mask_items", "run_search_and_mask"]


@dataclass
class MaskJob:
    """What :func:`mask_items` produced."""

    store: Path
    item_path: Path | None
    mask: xr.DataArray
    data: xr.Dataset
    source_items: list[str] = field(default_factory=list)


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
    invalid: str = "nodata",
    multiscales: Sequence[int] = (),
    progress: bool = False,
    write_stac_item: bool = True,
) -> MaskJob:
    """Mask STAC items with ``model`` and write the masks to a Zarr store, chunk by chunk.

    The bands the model needs are loaded lazily (:func:`xcloud.load`), masked with
    :func:`xcloud.predict` and written with :func:`xcloud.outputs.to_zarr`, which is
    resumable and appends new dates along ``time``; a STAC item describing the store is
    written beside it. Runs on the active Dask client when there is one. Pixels where only
    some bands have data (scene and swath edges, where 10, 20 and 60 m bands end at
    different places) are no data unless ``invalid="raise"``.
    """
    from .outputs.stac import write_item
    from .outputs.zarr import to_zarr

    info = get(model).info
    data = load(items, bands=list(info.bands), resolution=resolution, chunks=chunk_size,
                bbox=bbox, crs=crs, resampling=resampling)
    mask = predict(data, model=model, weights=weights, device=device, invalid=invalid)
    to_zarr(mask, store, multiscales=tuple(multiscales), progress=progress)
    item_path = write_item(store, source_items=items) if write_stac_item else None
    return MaskJob(Path(store), item_path, mask, data, list(data.attrs["source_items"]))


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
