"""``load``: STAC items -> a lazy Dataset of Sentinel-2 reflectance (odc-stac + numba kernels).

Bands are read on their native grid and brought to the output grid with xcloud's kernels when
the output is finer by an integer factor (20 m and 60 m bands onto 10 m: ``bilinear`` or
KappaMask's Blackman-windowed ``sinc``); other cases use odc-stac's own resampling. Digital
numbers become reflectance by the rule of :mod:`xcloud.data.radiometry`, item by item, before
anything is resampled or fused, so items of different processing baselines mix safely.

Read failures: an asset that cannot be read when a chunk is computed (missing, truncated or
corrupt file) raises :class:`~xcloud.errors.AssetReadError` with ``strict=True``. By default
the read is caught where it happens (inside the Dask task), that item's pixels of the chunk
become no data (NaN; masks mark them no data, never clear), an
:class:`~xcloud.errors.AssetReadWarning` is issued and the failure is recorded in the process
that read it (:func:`take_read_failures`); :func:`xcloud.to_zarr` collects these records and
stores their count and item ids in the store's ``xcloud:read_failures`` attribute.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .._optional import import_optional
from ..errors import AssetReadError, AssetReadWarning, StacError
from .bands import SENTINEL2_BANDS, canonical_band_name
from .items import as_items, common_bands, harmonize_item, item_radiometry
from .radiometry import Radiometry

DEFAULT_CHUNK = 1024
"""Spatial chunk in pixels (``load`` and ``predict``): a full 10 m tile in 1024 px chunks is
masked in under 4 GiB, about as fast as in 2048 px chunks (benchmarks/bench_memory.py)."""

__all__ = ["DEFAULT_CHUNK", "SOURCE_ITEMS_ATTR", "ReadFailure", "load", "take_read_failures"]

SOURCE_ITEMS_ATTR = "source_items"
"""Dataset/mask attribute listing the ids of the STAC items the data came from."""

_KERNEL_METHODS = ("bilinear", "sinc", "nearest")
_GROUPINGS = ("solar_day", "time", "id")


@dataclass(frozen=True)
class ReadFailure:
    """One asset read that failed: which item and band, from where, why, for which chunk.

    ``chunk`` is the bounding box of the grid being read (unique per chunk and band).
    """

    item: str
    band: str
    href: str
    error: str
    chunk: str


_FAILURES: list[ReadFailure] = []
_FAILURES_LOCK = threading.Lock()


def take_read_failures() -> list[ReadFailure]:
    """The read failures recorded in this process since the last call, and forget them.

    Returns
    -------
    list of ReadFailure
        In the order they happened (reads with ``strict=False`` that failed and were filled
        with no data).
    """
    with _FAILURES_LOCK:
        taken = list(_FAILURES)
        _FAILURES.clear()
    return taken


def _record_failure(failure: ReadFailure) -> None:
    with _FAILURES_LOCK:
        _FAILURES.append(failure)
    warnings.warn(f"cannot read band {failure.band} of item {failure.item!r} "
                  f"({failure.href}): {failure.error}; its pixels are marked no data",
                  AssetReadWarning, stacklevel=2)


class _CheckedReader:
    """An odc reader whose read failures become no data and a record, or AssetReadError."""

    def __init__(self, reader: Any, source: tuple[str, str], href: str, strict: bool) -> None:
        self._reader, self._source, self._href, self._strict = reader, source, href, strict

    def read(self, cfg: Any, dst_geobox: Any, *, dst: Any = None,
             selection: Any = None) -> tuple[Any, Any]:
        try:
            return self._reader.read(cfg, dst_geobox, dst=dst, selection=selection)
        # any failure: rasterio/GDAL errors, OSError, and e.g. odc-geo's AssertionError on a
        # GeoTIFF cut inside its tags (it opens without a CRS)
        except Exception as error:
            item, band = self._source
            if self._strict:
                raise AssetReadError(
                    f"cannot read band {band} of item {item!r} from {self._href}: {error}. "
                    "The file is missing, truncated or corrupt: fetch it again, or load with "
                    "strict=False to mark its pixels as no data and record the failure."
                ) from error
            _record_failure(ReadFailure(item, band, self._href, " ".join(str(error).split()),
                                        str(dst_geobox.boundingbox)))
        empty = dst[0:0, 0:0] if dst is not None else np.empty((0, 0), cfg.dtype)
        return np.s_[0:0, 0:0], empty  # nothing read: the chunk keeps its no-data fill


class _CheckedDriver:
    """odc-stac's rasterio driver with :class:`_CheckedReader` readers (picklable)."""

    def __init__(self, sources: Mapping[str, tuple[str, str]], strict: bool) -> None:
        from odc.loader import RioDriver
        from odc.stac._mdtools import StacAuxReader

        self._rio = RioDriver(aux_reader=StacAuxReader())
        self._sources, self._strict = dict(sources), strict

    def new_load(self, geobox: Any, *, chunks: Any = None) -> Any:
        return self._rio.new_load(geobox, chunks=chunks)

    def finalise_load(self, load_state: Any) -> Any:
        return self._rio.finalise_load(load_state)

    def capture_env(self) -> dict[str, Any]:
        return self._rio.capture_env()

    @contextmanager
    def restore_env(self, env: dict[str, Any], load_state: Any) -> Iterator[Any]:
        with self._rio.restore_env(env, load_state) as context:
            yield context

    def open(self, src: Any, ctx: Any) -> _CheckedReader:
        source = self._sources.get(src.uri, (src.uri, str(src.band)))
        return _CheckedReader(self._rio.open(src, ctx), source, src.uri, self._strict)

    @property
    def md_parser(self) -> Any:
        return self._rio.md_parser

    @property
    def dask_reader(self) -> Any:
        return self._rio.dask_reader

    @property
    def aux_reader(self) -> Any:
        return self._rio.aux_reader


def _asset_sources(items: Sequence[Any], names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Asset href -> (item id, band name), to name the item of a failed read."""
    sources = {}
    for item in items:
        for name in names:
            if name in item.assets:
                asset = item.assets[name]
                sources[asset.get_absolute_href() or asset.href] = (item.id, name)
    return sources


@dataclass(frozen=True)
class _LoadPlan:
    geobox: Any
    native_crs: bool
    chunk: int
    resampling: str
    driver: Any


def load(
    items: Iterable[Any],
    *,
    bands: Sequence[str] | None = None,
    resolution: float = 10.0,
    chunks: int | Mapping[str, int] = DEFAULT_CHUNK,
    crs: str | int | None = None,
    bbox: Sequence[float] | None = None,
    geobox: Any = None,
    groupby: str = "solar_day",
    resampling: str = "bilinear",
    assume_baseline: str | None = None,
    strict: bool = False,
) -> xr.Dataset:
    """Load STAC items lazily as float32 TOA/BOA reflectance, one variable per band.

    Parameters
    ----------
    items
        An ItemCollection (e.g. from :func:`xcloud.search`), pystac Items or STAC JSON dicts
        from Earth Search, Planetary Computer or stactools.
    bands
        Band names in any provider's spelling (``blue``, ``B02``, ``nir08``, ``SCL``...);
        default: every spectral band that all items have. Variables get canonical names.
    resolution, crs, bbox, geobox
        Output grid: pixel size in CRS units, CRS (default: the items' most common one),
        lon/lat bounding box, or a complete ``odc.geo.GeoBox``.
    chunks
        Spatial chunk size in output pixels (time chunks are 1).
    groupby
        ``"solar_day"`` fuses the items of one orbit pass, ``"time"`` items with one timestamp,
        ``"id"`` keeps every item apart.
    resampling
        ``"bilinear"``, ``"sinc"`` (Blackman-windowed sinc) or ``"nearest"`` for bands coarser
        than the output; class layers (SCL) always use nearest.
    assume_baseline
        Processing baseline for items that do not tell theirs (see :mod:`~.radiometry`).
    strict
        What an asset that cannot be read when the data are computed does (a missing,
        truncated or corrupt file): ``False`` (default) marks that item's pixels of the chunk
        as no data, issues an :class:`~xcloud.errors.AssetReadWarning` and records the
        failure (:func:`take_read_failures`; :func:`xcloud.to_zarr` stores the count and the
        item ids as ``xcloud:read_failures``); ``True`` raises
        :class:`~xcloud.errors.AssetReadError`.

    Returns
    -------
    xarray.Dataset
        Dims ``(time, y, x)``, coordinates and ``spatial_ref`` from odc-stac; reflectance as
        float32 with NaN for no data (SCL stays uint8); attribute ``source_items``.
    """
    odc_stac = import_optional("odc.stac", extra="geo")
    if resampling not in _KERNEL_METHODS:
        raise ValueError(f"resampling must be one of {_KERNEL_METHODS}, got {resampling!r}")
    if groupby not in _GROUPINGS:
        raise ValueError(f"groupby must be one of {_GROUPINGS}, got {groupby!r}")
    pystac_items = as_items(items)
    names = _band_names(bands, pystac_items)
    harmonized = [harmonize_item(item, names) for item in pystac_items]
    radiometry = {item.id: item_radiometry(item, names, assume_baseline=assume_baseline)
                  for item in harmonized}
    parsed = list(odc_stac.parse_items(harmonized))
    if geobox is None:
        geobox = odc_stac.output_geobox(parsed, names, crs=crs, resolution=resolution, bbox=bbox)
    if geobox is None:
        raise StacError("cannot derive an output grid from the items; pass crs and resolution")
    native_crs = all(p.crs(names) == geobox.crs for p in parsed)
    chunk = int(chunks if isinstance(chunks, int) else min(chunks.get("x", DEFAULT_CHUNK),
                                                           chunks.get("y", DEFAULT_CHUNK)))
    driver = _CheckedDriver(_asset_sources(harmonized, names), strict)
    plan = _LoadPlan(geobox, native_crs, chunk, resampling, driver)
    groups = _group_items(harmonized, groupby)
    slices = [_load_group(group, names, radiometry, plan) for group in groups]
    dataset = xr.concat(slices, dim="time", combine_attrs="override") if len(slices) > 1 \
        else slices[0]
    dataset.attrs[SOURCE_ITEMS_ATTR] = [item.id for group in groups for item in group]
    return dataset


def _band_names(bands: Sequence[str] | None, items: Sequence[Any]) -> list[str]:
    if bands is None:
        return common_bands(items)
    names = []
    for name in bands:
        canonical = canonical_band_name(name)
        if canonical is None:
            raise StacError(f"unknown band {name!r}; known: {', '.join(SENTINEL2_BANDS)}")
        names.append(canonical)
    return names


def _group_key(item: Any, groupby: str) -> Any:
    if groupby == "id":
        return item.id
    odc_stac = import_optional("odc.stac", extra="geo")
    parsed = odc_stac.parse_item(item)
    return parsed.solar_date if groupby == "solar_day" else parsed.nominal_datetime


def _group_items(items: Sequence[Any], groupby: str) -> list[list[Any]]:
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(_group_key(item, groupby), []).append(item)
    ordered = sorted(groups.values(), key=lambda group: min(i.datetime for i in group))
    return [sorted(group, key=lambda i: i.id) for group in ordered]


def _asset_resolution(item: Any, name: str) -> float:
    asset = item.assets[name].to_dict()
    if asset.get("proj:transform"):
        return abs(float(asset["proj:transform"][0]))
    raster = (asset.get("raster:bands") or [{}])[0]
    return float(raster.get("spatial_resolution") or asset.get("gsd")
                 or SENTINEL2_BANDS[name].resolution)


def _native_factor(item: Any, name: str, plan: _LoadPlan) -> int:
    """Integer ratio of a band's native pixel size to the output's, 1 when not integer."""
    if not plan.native_crs:
        return 1
    native = _asset_resolution(item, name)
    output = abs(plan.geobox.resolution.x)
    ratio = native / output
    return round(ratio) if ratio > 1 and math.isclose(ratio, round(ratio)) else 1


def _load_group(group: list[Any], names: Sequence[str],
                radiometry: Mapping[str, Mapping[str, Radiometry]],
                plan: _LoadPlan) -> xr.Dataset:
    from odc.geo.xr import xr_coords

    _check_group_radiometry(group, names, radiometry)
    first = radiometry[group[0].id]
    by_factor: dict[int, list[str]] = {}
    for name in names:
        by_factor.setdefault(_native_factor(group[0], name, plan), []).append(name)
    variables, time = {}, None
    for factor, factor_names in by_factor.items():
        raw = _read(group, factor_names, plan, factor)
        time = raw["time"].values
        for name in factor_names:
            variables[name] = _to_output_grid(raw[name], first[name], factor, plan)
    coords = dict(xr_coords(plan.geobox, crs_coord_name="spatial_ref"))
    coords["time"] = time
    dims = ("time", *plan.geobox.dimensions)
    return xr.Dataset({name: (dims, variables[name]) for name in names}, coords=coords)


def _check_group_radiometry(group: list[Any], names: Sequence[str],
                            radiometry: Mapping[str, Mapping[str, Radiometry]]) -> None:
    reference = radiometry[group[0].id]
    for item in group[1:]:
        for name in names:
            this, first = radiometry[item.id][name], reference[name]
            if (this.scale, this.offset) != (first.scale, first.offset):
                raise StacError(
                    f"items {group[0].id!r} and {item.id!r} of one time step need different "
                    f"radiometry for {name} ({first} vs {this}); load with groupby='id'"
                )


def _read(group: list[Any], names: list[str], plan: _LoadPlan, factor: int) -> xr.Dataset:
    odc_stac = import_optional("odc.stac", extra="geo")
    geobox = plan.geobox.zoom_out(factor) if factor > 1 else plan.geobox
    chunk = max(1, math.ceil(plan.chunk / factor))
    dataset = odc_stac.load(group, names, geobox=geobox, groupby="solar_day",
                            chunks={"x": chunk, "y": chunk}, resampling="nearest",
                            driver=plan.driver)
    if dataset.sizes["time"] != 1:  # items were grouped by xcloud already
        dataset = dataset.max("time", keep_attrs=True).expand_dims(time=dataset.time[:1])
    return dataset


def _to_reflectance(raw: xr.DataArray, radiometry: Radiometry) -> Any:
    data = raw.data
    if radiometry.is_class_layer:  # read as float where the item does not give a data type
        if np.issubdtype(data.dtype, np.floating):
            data = _where(data == data, data, radiometry.nodata)
        return data.astype(np.uint8)
    valid = data != radiometry.nodata
    values = data.astype(np.float32) * np.float32(radiometry.scale) + np.float32(radiometry.offset)
    return _where(valid, values, np.float32(np.nan))


def _where(valid: Any, values: Any, other: Any) -> Any:
    import dask.array as da

    return da.where(valid, values, other).astype(values.dtype)


def _to_output_grid(raw: xr.DataArray, radiometry: Radiometry, factor: int,
                    plan: _LoadPlan) -> Any:
    import dask.array as da

    values = _to_reflectance(raw, radiometry)
    if factor > 1:
        from .resample import resample_dask

        method = "nearest" if radiometry.is_class_layer else plan.resampling
        values = resample_dask(values, factor, method=method, out_shape=plan.geobox.shape.yx)
    chunks = (1, plan.chunk, plan.chunk)
    return values.rechunk(chunks) if isinstance(values, da.Array) else values
