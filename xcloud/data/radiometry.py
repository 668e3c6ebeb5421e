"""From Sentinel-2 digital numbers to reflectance: scale, offset and the processing baseline.

The rule, per item and asset, in this order:

1. If the item says the provider already applied the offset to its pixels (Earth Search's
   ``earthsearch:boa_offset_applied: true``), the offset is 0 whatever ``raster:bands`` says:
   applying it again would subtract 0.1 twice.
2. If the asset has ``raster:bands`` with an ``offset``, use its ``scale`` and ``offset``.
3. Otherwise the offset follows the processing baseline (``s2:processing_baseline``, the older
   ``sentinel:processing_baseline``, or the ``_Nxxxx_`` field of the product name): -1000 DN
   (-0.1 reflectance) from baseline 04.00 on, none before. The baseline decides, not the
   acquisition date: scenes of 2017 reprocessed at baseline 05.00 carry the offset.
4. No baseline and no ``raster:bands`` offset: :class:`~xcloud.errors.RadiometryError`, unless
   the caller says which baseline to assume.

Scales: 1/10000 for spectral bands, 1/1000 for AOT and WVP; SCL is a class layer and is not
scaled. Digital number 0 is no data for every layer and becomes NaN in reflectance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RadiometryError
from .bands import SENTINEL2_BANDS

__all__ = [
    "OFFSET_BASELINE",
    "Radiometry",
    "asset_radiometry",
    "baseline_offset",
    "parse_baseline",
    "processing_baseline",
    "processing_level",
]

OFFSET_BASELINE = (4, 0)
"""First processing baseline whose products carry the -1000 DN radiometric offset."""

_BASELINE_PROPERTIES = ("s2:processing_baseline", "sentinel:processing_baseline",
                        "processing:version")
_PRODUCT_PROPERTIES = ("s2:product_uri", "s2:product_id", "sentinel:product_id")
_PRODUCT_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")
_APPLIED_PROPERTIES = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
_SCALES = {"AOT": 0.001, "WVP": 0.001, "SCL": None}
_DEFAULT_SCALE = 1e-4
_OFFSET_DN = -1000


@dataclass(frozen=True)
class Radiometry:
    """How one asset's digital numbers become physical values: ``dn * scale + offset``.

    ``scale`` is ``None`` for class layers (SCL), which keep their integer values.
    """

    scale: float | None
    offset: float
    nodata: float = 0
    source: str = ""

    @property
    def is_class_layer(self) -> bool:
        """True for layers that hold classes, not measurements."""
        return self.scale is None


def parse_baseline(value: object) -> tuple[int, int] | None:
    """``"04.00"``, ``"N0400"``, ``"4.0"`` or ``4.0`` as ``(4, 0)``; ``None`` if unreadable."""
    text = str(value).strip().upper().lstrip("N")
    match = re.fullmatch(r"(\d{1,2})\.(\d{1,2})", text) or re.fullmatch(r"(\d{2})(\d{2})", text)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def processing_baseline(properties: Mapping[str, Any]) -> tuple[int, int] | None:
    """The item's processing baseline from its properties or product name, if it tells."""
    for key in _BASELINE_PROPERTIES:
        if properties.get(key) is not None:
            parsed = parse_baseline(properties[key])
            if parsed is not None:
                return parsed
    for key in _PRODUCT_PROPERTIES:
        match = _PRODUCT_BASELINE.search(str(properties.get(key, "")))
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


_LEVEL_PATTERN = re.compile(r"(?:MSI|_|-|^)(L1C|L2A|1C|2A)(?:_|-|$)", re.IGNORECASE)


def processing_level(properties: Mapping[str, Any], collection: str | None = None
                     ) -> str | None:
    """``"L1C"`` or ``"L2A"`` from an item's ``s2:product_type`` (S2MSI1C / S2MSI2A),
    ``processing:level``, product name (``MSIL1C``) or collection id (``sentinel-2-l2a``);
    ``None`` if none of them tells."""
    candidates = [properties.get("s2:product_type"), properties.get("processing:level"),
                  *(properties.get(key) for key in _PRODUCT_PROPERTIES), collection]
    for value in candidates:
        match = _LEVEL_PATTERN.search(str(value or "").replace("S2MSI", "MSI"))
        if match:
            return "L" + match.group(1).upper().removeprefix("L")
    return None


def baseline_offset(baseline: tuple[int, int]) -> float:
    """Reflectance offset of a spectral band at a processing baseline (-0.1 from 04.00 on)."""
    return _OFFSET_DN * _DEFAULT_SCALE if baseline >= OFFSET_BASELINE else 0.0


def _raster_band(asset: Mapping[str, Any]) -> Mapping[str, Any]:
    bands = asset.get("raster:bands") or [{}]
    return bands[0] if isinstance(bands[0], Mapping) else {}


def _offset_applied(properties: Mapping[str, Any]) -> bool:
    return any(properties.get(key) is True for key in _APPLIED_PROPERTIES)


def _assumed_baseline(value: str) -> tuple[int, int]:
    baseline = parse_baseline(value)
    if baseline is None:
        raise RadiometryError(f"assume_baseline={value!r} is not a processing baseline; pass "
                              "it as 'NN.NN', e.g. assume_baseline='02.09' or '04.00'")
    return baseline


def asset_radiometry(
    properties: Mapping[str, Any],
    asset: Mapping[str, Any],
    band_name: str,
    *,
    item_id: str = "",
    assume_baseline: str | None = None,
) -> Radiometry:
    """Scale and offset of one asset of a Sentinel-2 item (see the module doc for the rule).

    Parameters
    ----------
    properties, asset
        The item's ``properties`` and the asset's dictionary (STAC JSON).
    band_name
        Canonical band name (``B02``, ``AOT``, ``SCL``...).
    item_id
        Used in error messages.
    assume_baseline
        Baseline to use when the item does not tell (e.g. ``"02.04"``).
    """
    raster = _raster_band(asset)
    nodata = raster.get("nodata", 0)
    nodata = 0 if nodata is None else nodata
    default_scale = _SCALES.get(band_name, _DEFAULT_SCALE)
    if default_scale is None:
        return Radiometry(None, 0.0, nodata, "class layer")
    scale = float(raster.get("scale") or default_scale)
    spectral = band_name in SENTINEL2_BANDS and SENTINEL2_BANDS[band_name].wavelength_min
    if not spectral:
        return Radiometry(scale, float(raster.get("offset") or 0.0), nodata, "raster:bands")
    if _offset_applied(properties):
        return Radiometry(scale, 0.0, nodata, "offset already applied by the provider")
    if raster.get("offset") is not None:
        return Radiometry(scale, float(raster["offset"]), nodata, "raster:bands")
    baseline = processing_baseline(properties)
    source = "processing baseline"
    if baseline is None and assume_baseline is not None:
        baseline, source = _assumed_baseline(assume_baseline), "assumed processing baseline"
    if baseline is None:
        raise RadiometryError(
            f"item {item_id!r} has no processing baseline (s2:processing_baseline) and asset "
            f"{band_name} has no raster:bands offset, so the -0.1 reflectance offset of "
            "baseline >= 04.00 cannot be decided; pass assume_baseline='04.00' for products "
            "processed from 2022-01-25 on (offset -0.1), or assume_baseline='02.14' for older "
            "ones (no offset)"
        )
    return Radiometry(scale, baseline_offset(baseline), nodata, source)
