"""Data in: band names and aliases, input checks, radiometry."""

from __future__ import annotations

from .bands import SENTINEL2_BANDS, Band, band, canonical_band_name, match_bands
from .inputs import band_cube, to_reflectance

__all__ = [
    "SENTINEL2_BANDS",
    "Band",
    "band",
    "band_cube",
    "canonical_band_name",
    "match_bands",
    "to_reflectance",
]
