"""The ``.cloudmask`` accessor on xarray Datasets and DataArrays (stateless)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import xarray as xr

if TYPE_CHECKING:
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

    def predict(self, **kwargs: Any) -> xr.DataArray:
        """Run :func:`xcloud.predict` on this object; see it for the keyword arguments."""
        from .engine.predict import predict

        return predict(self._obj, **kwargs)

    def to_zarr(self, store: str | os.PathLike[str], **kwargs: Any) -> ZarrWriteSummary:
        """Write this mask with :func:`xcloud.outputs.to_zarr`; see it for the keyword arguments."""
        from .outputs.zarr import to_zarr

        return to_zarr(self._obj, store, **kwargs)

    def plot(self, data: xr.Dataset | None = None, **kwargs: Any) -> Any:
        """Draw this mask with :func:`xcloud.outputs.plot.plot_mask` (true colour from
        ``data``, legend); see it for the keyword arguments. Returns the Axes."""
        from .outputs.plot import plot_mask

        return plot_mask(self._obj, data, **kwargs)

    def fraction(self, **kwargs: Any) -> xr.DataArray:
        """Fraction of each class per time step, :func:`xcloud.outputs.plot.class_fractions`
        (lazy for a Dask-backed mask); see it for the keyword arguments."""
        from .outputs.plot import class_fractions

        return class_fractions(self._obj, **kwargs)


xr.register_dataset_accessor("cloudmask")(CloudMaskAccessor)
xr.register_dataarray_accessor("cloudmask")(CloudMaskAccessor)
