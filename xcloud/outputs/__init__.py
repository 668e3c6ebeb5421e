"""Outputs: CF attributes of masks (Zarr, COG and STAC writers build on them)."""

from __future__ import annotations

from .cf import mask_attrs, probability_attrs

__all__ = ["mask_attrs", "probability_attrs"]
