"""Sentinel-2 bands: canonical names, aliases used by data providers, wavelengths, resolutions.

Canonical names are the MSI names (``B01``..``B12``, ``B8A``) plus the Level-2A auxiliary
layers ``AOT``, ``WVP`` and ``SCL``. Aliases cover Earth Search (``blue``, ``nir08``,
``swir16``...), Planetary Computer (``B01``..) and common spellings (``B2``, ``rededge4``).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import BandError, MissingBandError

__all__ = [
    "SENTINEL2_BANDS",
    "Band",
    "band",
    "canonical_band_name",
    "match_bands",
]


@dataclass(frozen=True)
class Band:
    """One input layer.

    Wavelengths are the band's full-width-at-half-maximum limits in nanometres (Sentinel-2A
    spectral response); ``None`` for non-spectral layers such as aerosol optical thickness.
    """

    name: str
    aliases: tuple[str, ...]
    resolution: float
    wavelength_min: float | None = None
    wavelength_max: float | None = None
    description: str = ""

    @property
    def wavelength_center(self) -> float | None:
        """Centre wavelength in nanometres."""
        if self.wavelength_min is None or self.wavelength_max is None:
            return None
        return (self.wavelength_min + self.wavelength_max) / 2


SENTINEL2_BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", ("coastal", "coastal_aerosol"), 60, 432, 453, "coastal aerosol"),
        Band("B02", ("blue",), 10, 459, 525, "blue"),
        Band("B03", ("green",), 10, 542, 578, "green"),
        Band("B04", ("red",), 10, 649, 680, "red"),
        Band("B05", ("rededge1", "rededge"), 20, 697, 712, "vegetation red edge 1"),
        Band("B06", ("rededge2",), 20, 733, 748, "vegetation red edge 2"),
        Band("B07", ("rededge3",), 20, 773, 793, "vegetation red edge 3"),
        Band("B08", ("nir", "nir_broad"), 10, 780, 886, "near infrared"),
        Band("B8A", ("nir08", "rededge4", "nir_narrow", "narrow_nir"), 20, 854, 875,
             "narrow near infrared"),
        Band("B09", ("nir09", "water_vapour", "water_vapor"), 60, 935, 955, "water vapour"),
        Band("B10", ("cirrus", "swir_cirrus"), 60, 1358, 1389, "SWIR cirrus"),
        Band("B11", ("swir16", "swir1"), 20, 1568, 1659, "shortwave infrared 1.6 um"),
        Band("B12", ("swir22", "swir2"), 20, 2115, 2290, "shortwave infrared 2.2 um"),
        Band("AOT", ("aot", "aerosol_optical_thickness"), 20,
             description="aerosol optical thickness"),
        Band("WVP", ("wvp", "water_vapour_path"), 20, description="water vapour path"),
        Band("SCL", ("scl", "scene_classification"), 20,
             description="Sen2Cor scene classification"),
    )
}

_LOOKUP: dict[str, str] = {}
for _band in SENTINEL2_BANDS.values():
    for _key in (_band.name, *_band.aliases):
        _LOOKUP[_key.lower()] = _band.name

_SHORT_NAME = re.compile(r"^b0?(\d{1,2}a?)$", re.IGNORECASE)


def canonical_band_name(name: str) -> str | None:
    """Return the canonical Sentinel-2 name of ``name`` (any alias, any case), or ``None``."""
    key = str(name).strip().lower()
    if key in _LOOKUP:
        return _LOOKUP[key]
    short = _SHORT_NAME.match(key)
    if short:
        number = short.group(1).upper()
        candidate = f"B{number.zfill(3 if number.endswith('A') else 2)}"
        return candidate if candidate in SENTINEL2_BANDS else None
    return None


def band(name: str) -> Band:
    """Return the :class:`Band` for a canonical name or alias."""
    canonical = canonical_band_name(name)
    if canonical is None:
        raise BandError(
            f"unknown band {name!r}; known Sentinel-2 bands: {', '.join(SENTINEL2_BANDS)}"
        )
    return SENTINEL2_BANDS[canonical]


def match_bands(available: Iterable[Hashable], required: Sequence[str]) -> list[str]:
    """Find, for each required canonical band, the name it has among ``available``.

    Extra available bands are ignored; two available names for the same band, or a required
    band that is absent, raise errors that name the bands.
    """
    found: dict[str, str] = {}
    for name in available:
        canonical = canonical_band_name(str(name))
        if canonical is None or canonical not in required:
            continue
        if canonical in found:
            raise BandError(
                f"band {canonical} appears twice in the input (as {found[canonical]!r} and "
                f"{name!r}); drop one of them"
            )
        found[canonical] = str(name)
    missing = [b for b in required if b not in found]
    if missing:
        raise MissingBandError(
            f"the input lacks band(s) {', '.join(missing)}; this model needs "
            f"{', '.join(required)} (any alias works, e.g. "
            f"{', '.join(f'{b}/{SENTINEL2_BANDS[b].aliases[0]}' for b in missing)})"
        )
    return [found[b] for b in required]
