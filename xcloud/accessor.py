"""The ``.cloudmask`` accessor on xarray Datasets and DataArrays (stateless)."""

from __future__ import annotations

from typing import Any

import xarray as xr

__all__ = ["CloudMaskAccessor"]


class CloudMaskAccessor:
    """``obj.cloudmask.predict(model=...)``: cloud masks of Sentinel-2 bands.

    The accessor holds nothing but the object it was reached from.
    """

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    def predict(self, **kwargs: Any) -> xr.DataArray:
        """Run :func:`xcloud.predict` on this object; see it for the keyword arguments."""
        from .engine.predict import predict

        return predict(self._obj, **kwargs)


xr.register_dataset_accessor("cloudmask")(CloudMaskAccessor)
xr.register_dataarray_accessor("cloudmask")(CloudMaskAccessor)
