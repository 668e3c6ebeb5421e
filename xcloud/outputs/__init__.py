"""Outputs: CF attributes of masks, resumable Zarr stores, STAC items, plots and quick-looks."""

from __future__ import annotations

from .cf import mask_attrs, probability_attrs
from .plot import class_fractions, plot_mask, save_plot
from .quicklook import write_quicklook
from .stac import mask_item, validate_item, write_item
from .zarr import ZarrWriteSummary, open_mask, to_zarr

__all__ = [
    "ZarrWriteSummary",
    "class_fractions",
    "mask_attrs",
    "mask_item",
    "open_mask",
    "plot_mask",
    "probability_attrs",
    "save_plot",
    "to_zarr",
    "validate_item",
    "write_item",
    "write_quicklook",
]
