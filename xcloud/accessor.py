"""The ``.cloudmask`` accessors on xarray Datasets and DataArrays (stateless).

As rioxarray's ``.rio``, one accessor per xarray type, each offering what works on it:
:class:`CloudMaskDataset` (bands as variables: ``predict``; masks as variables: ``to_zarr``)
and :class:`CloudMaskArray` (a band stack or a mask: ``predict`` and ``to_zarr``, and on a
class mask ``plot`` and ``fraction``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

from .data.load import DEFAULT_CHUNK
from .outputs.lease import DEFAULT_LEASE_TTL

if TYPE_CHECKING:
    from pathlib import Path

    from .outputs.plot import TimeSelector
    from .outputs.zarr import ZarrWriteSummary

__all__ = ["CloudMaskArray", "CloudMaskBase", "CloudMaskDataset"]


class CloudMaskBase:
    """What both accessors offer: ``obj.cloudmask.predict(model=...)`` (cloud masks of
    Sentinel-2 bands) and ``mask.cloudmask.to_zarr(store)`` (a mask, or a Dataset of masks
    and probabilities, to Zarr). The accessor holds nothing but the object it was reached
    from.

    Parameters
    ----------
    obj
        The Dataset or DataArray the accessor was reached from.
    """

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    def predict(
        self,
        *,
        model: str = "ukis-6b-l1c",
        weights: str | Path | None = None,
        output: str = "class",
        device: str = "auto",
        runtime: str = "auto",
        precision: str = "float32",
        batch_size: int = 4,
        halo: int | None = None,
        boundary: str = "reflect",
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        tile_anchor: int | None = None,
        tile_blend: str | None = None,
        nodata: float | None = None,
        invalid: str = "nodata",
        resolution: float | None = None,
        read_resolution: str | float | None = None,
        scale: float | None = None,
        offset: float | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        bands: Sequence[str] | None = None,
        strict: bool = False,
    ) -> xr.DataArray:
        """Run :func:`xcloud.predict` on this object (its bands).

        Parameters
        ----------
        model, weights, output, device, runtime, precision, batch_size, halo, boundary, \
tile_size, tile_overlap, tile_anchor, tile_blend, nodata, invalid, resolution, \
read_resolution, scale, offset, chunk_size, bands, strict
            As for :func:`xcloud.predict`.

        Returns
        -------
        xarray.DataArray
            The mask (or probabilities), lazy for Dask-backed bands.
        """
        from .engine.predict import predict

        return predict(
            self._obj, model=model, weights=weights, output=output, device=device,
            runtime=runtime, precision=precision, batch_size=batch_size, halo=halo,
            boundary=boundary, tile_size=tile_size, tile_overlap=tile_overlap,
            tile_anchor=tile_anchor,
            tile_blend=tile_blend, nodata=nodata, invalid=invalid, resolution=resolution,
            read_resolution=read_resolution, scale=scale, offset=offset, chunk_size=chunk_size,
            bands=bands, strict=strict,
        )

    def to_zarr(
        self,
        store: str | os.PathLike[str],
        *,
        multiscales: Sequence[int] = (),
        consolidated: bool = True,
        zarr_format: int | None = None,
        overwrite: bool = False,
        scheduler: Any = None,
        progress: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> ZarrWriteSummary:
        """Write this mask (or Dataset of masks) with :func:`xcloud.to_zarr`, chunk by chunk.

        Parameters
        ----------
        store
            The store's path or URL.
        multiscales, consolidated, zarr_format, overwrite, scheduler, progress, \
storage_options, lease_ttl
            As for :func:`xcloud.to_zarr`.

        Returns
        -------
        ZarrWriteSummary
            What was written and skipped.
        """
        from .outputs.zarr import to_zarr

        return to_zarr(
            self._obj, store, multiscales=multiscales, consolidated=consolidated,
            zarr_format=zarr_format, overwrite=overwrite, scheduler=scheduler,
            progress=progress, storage_options=storage_options, lease_ttl=lease_ttl,
        )



@xr.register_dataset_accessor("cloudmask")
class CloudMaskDataset(CloudMaskBase):
    """``ds.cloudmask``: ``predict`` on a Dataset of bands (one variable per band) and
    ``to_zarr`` of a Dataset of masks. Plots and class fractions need one mask: use them on
    the mask, ``mask.cloudmask.plot(ds)``.

    Parameters
    ----------
    obj
        The Dataset the accessor was reached from.
    """

    def __init__(self, obj: xr.Dataset) -> None:
        super().__init__(obj)


@xr.register_dataarray_accessor("cloudmask")
class CloudMaskArray(CloudMaskBase):
    """``da.cloudmask``: ``predict`` on a band stack (a ``band`` dimension), ``to_zarr``, and on
    a class mask (from ``predict(output="class")``) ``plot`` and ``fraction``.

    Parameters
    ----------
    obj
        The DataArray the accessor was reached from.
    """

    def __init__(self, obj: xr.DataArray) -> None:
        super().__init__(obj)
        self._mask = obj

    def plot(
        self,
        data: xr.Dataset | None = None,
        *,
        ax: Any = None,
        time: TimeSelector = 0,
        max_size: int = 1024,
        alpha: float = 0.55,
        brightness: float = 0.3,
        legend: bool = True,
        title: str | None = None,
    ) -> Any:
        """Draw this class mask over the true colour of ``data``, with a legend.

        Parameters
        ----------
        data
            The bands the mask was predicted from (B04, B03, B02 give the true colour); None
            draws the mask alone.
        ax, time, max_size, alpha, brightness, legend, title
            As for :func:`xcloud.outputs.plot.plot_mask`.

        Returns
        -------
        matplotlib.axes.Axes
            The axes drawn on.
        """
        from .outputs.plot import plot_mask

        return plot_mask(self._mask, data, ax=ax, time=time, max_size=max_size,
                         alpha=alpha, brightness=brightness, legend=legend, title=title)

    def fraction(self, *, by_time: bool = True) -> xr.DataArray:
        """Fraction of each class among the valid pixels, and of no data among all.

        Parameters
        ----------
        by_time
            One fraction per time step (True) or over the whole mask (False).

        Returns
        -------
        xarray.DataArray
            As :func:`xcloud.outputs.plot.class_fractions` returns it (lazy for a Dask-backed
            mask).
        """
        from .outputs.plot import class_fractions

        return class_fractions(self._mask, by_time=by_time)
