"""STAC items from any provider in one layout: canonical band names and their radiometry.

Earth Search names its assets ``blue``, ``nir08``, ``swir16``, ``cirrus``, ``scl``, ``aot``,
``wvp`` (plus ``-jp2`` twins of the COGs), Planetary Computer and stactools ``B01``..``B12``,
``SCL``, ``AOT``. :func:`harmonize_item` returns a copy of an item whose assets are keyed by the
canonical Sentinel-2 names (``B02``, ``B8A``, ``SCL``...), so items of every provider load the
same way, and :func:`item_radiometry` tells how each asset's numbers become reflectance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._optional import import_optional
from ..errors import MissingBandError, NoItemsError
from .bands import SENTINEL2_BANDS, canonical_band_name
from .radiometry import Radiometry, asset_radiometry

__all__ = [
    "as_items",
    "band_assets",
    "common_bands",
    "harmonize_item",
    "item_radiometry",
]

_SKIPPED_ROLES = {"visual", "overview", "thumbnail", "metadata"}
_TWIN_SUFFIX = "-jp2"


def as_items(items: Iterable[Any]) -> list[Any]:
    """Items from an ItemCollection, pystac Items or STAC JSON dictionaries, as pystac Items."""
    pystac = import_optional("pystac", extra="geo")
    result = [item if isinstance(item, pystac.Item) else pystac.Item.from_dict(dict(item))
              for item in items]
    if not result:
        raise NoItemsError(
            "no STAC items to load: the search matched nothing; widen the bbox/datetime "
            "or relax the query (e.g. a higher eo:cloud_cover limit)"
        )
    return result


def _asset_band(key: str, asset: Mapping[str, Any]) -> str | None:
    roles = set(asset.get("roles") or ())
    if roles & _SKIPPED_ROLES and "data" not in roles:
        return None
    canonical = canonical_band_name(key.removesuffix(_TWIN_SUFFIX))
    if canonical is not None:
        return canonical
    eo_bands = asset.get("eo:bands") or []
    if len(eo_bands) == 1 and isinstance(eo_bands[0], Mapping):
        return canonical_band_name(str(eo_bands[0].get("name", "")))
    return None


def band_assets(item: Any) -> dict[str, str]:
    """Canonical band name -> asset key of ``item``; cloud-optimised GeoTIFFs win over JP2."""
    found: dict[str, str] = {}
    for key, asset in item.assets.items():
        name = _asset_band(key, asset.to_dict())
        if name is None:
            continue
        if name not in found or found[name].endswith(_TWIN_SUFFIX):
            found[name] = key
    return found


def common_bands(items: Sequence[Any]) -> list[str]:
    """Spectral bands that every item has, in Sentinel-2 order."""
    shared = set.intersection(*(set(band_assets(item)) for item in items))
    return [name for name, band in SENTINEL2_BANDS.items()
            if name in shared and band.wavelength_min is not None]


def harmonize_item(item: Any, bands: Sequence[str]) -> Any:
    """A copy of ``item`` with only ``bands``' assets, keyed by their canonical names."""
    assets = band_assets(item)
    missing = [name for name in bands if name not in assets]
    if missing:
        raise MissingBandError(
            f"item {item.id!r} has no asset for band(s) {', '.join(missing)} (its assets: "
            f"{', '.join(item.assets)}); request bands that every item has"
        )
    copy = item.clone()
    copy.assets = {name: item.assets[assets[name]].clone() for name in bands}
    for asset in copy.assets.values():
        asset.owner = copy
    return copy


def item_radiometry(item: Any, bands: Sequence[str], *,
                    assume_baseline: str | None = None) -> dict[str, Radiometry]:
    """How each band asset of a harmonised ``item`` becomes reflectance (see ``radiometry``)."""
    return {
        name: asset_radiometry(item.properties, item.assets[name].to_dict(), name,
                               item_id=item.id, assume_baseline=assume_baseline)
        for name in bands
    }
