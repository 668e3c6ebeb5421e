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

    ``mask.cloudmask.to_zarr(store)`` writes a mask to Zarr. The accessor holds nothing but
    the object it was reached from.
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


xr.register_dataset_accessor("cloudmask")(CloudMaskAccessor)
xr.register_dataarray_accessor("cloudmask")(CloudMaskAccessor)
