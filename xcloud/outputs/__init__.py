"""Outputs: CF attributes of masks, resumable Zarr stores and STAC items describing them."""

from __future__ import annotations

from .cf import mask_attrs, probability_attrs
from .stac import mask_item, write_item
from .zarr import ZarrWriteSummary, to_zarr

__all__ = [
    "ZarrWriteSummary",
    "mask_attrs",
    "mask_item",
    "probability_attrs",
    "to_zarr",
    "write_item",
]
