"""The ``.cloudmask`` accessor on xarray Datasets and DataArrays (stateless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

from .data.load import DEFAULT_CHUNK
from .errors import DatasetError
from .outputs.lease import DEFAULT_LEASE_TTL

if TYPE_CHECKING:
    from pathlib import Path

    from .outputs.plot import TimeSelector
    from .outputs.zarr import ZarrWriteSummary

__all__ = ["CloudMaskAccessor"]


class CloudMaskAccessor:
    """``obj.cloudmask.predict(model=...)``: cloud masks of Sentinel-2 bands.

    ``mask.cloudmask.to_zarr(store)`` writes a mask to Zarr, ``mask.cloudmask.plot(data)``
    draws it with a legend and ``mask.cloudmask.fraction()`` gives the fraction of each class.
    The accessor holds nothing but the object it was reached from.
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
        scale: float | None = None,
        offset: float | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        bands: Sequence[str] | None = None,
        strict: bool = False,
    ) -> xr.DataArray:
        """Run :func:`xcloud.predict` on this object; see it for the keyword arguments."""
        from .engine.predict import predict

        return predict(
            self._obj, model=model, weights=weights, output=output, device=device,
            runtime=runtime, batch_size=batch_size, halo=halo, boundary=boundary,
            tile_size=tile_size, tile_overlap=tile_overlap, tile_anchor=tile_anchor,
            tile_blend=tile_blend, nodata=nodata, invalid=invalid, resolution=resolution,
            scale=scale, offset=offset, chunk_size=chunk_size, bands=bands, strict=strict,
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
        """Write this mask with :func:`xcloud.outputs.to_zarr`; see it for the keyword arguments."""
        from .outputs.zarr import to_zarr

        return to_zarr(
            self._obj, store, multiscales=multiscales, consolidated=consolidated,
            zarr_format=zarr_format, overwrite=overwrite, scheduler=scheduler,
            progress=progress, storage_options=storage_options, lease_ttl=lease_ttl,
        )

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
        """Draw this mask with :func:`xcloud.outputs.plot.plot_mask` (true colour from
        ``data``, legend); see it for the keyword arguments. Returns the Axes."""
        from .outputs.plot import plot_mask

        return plot_mask(self._class_mask(), data, ax=ax, time=time, max_size=max_size,
                         alpha=alpha, brightness=brightness, legend=legend, title=title)

    def fraction(self, *, by_time: bool = True) -> xr.DataArray:
        """Fraction of each class per time step, :func:`xcloud.outputs.plot.class_fractions`
        (lazy for a Dask-backed mask); see it for the keyword arguments."""
        from .outputs.plot import class_fractions

        return class_fractions(self._class_mask(), by_time=by_time)

    def _class_mask(self) -> xr.DataArray:
        """The object as a class mask; a Dataset raises what the plot helpers raise."""
        if not isinstance(self._obj, xr.DataArray):
            raise DatasetError(
                "a class mask is needed: a DataArray with flag_values/flag_meanings attributes "
                "(from xcloud.predict with output='class'); probabilities have no classes"
            )
        return self._obj


xr.register_dataset_accessor("cloudmask")(CloudMaskAccessor)
xr.register_dataarray_accessor("cloudmask")(CloudMaskAccessor)
