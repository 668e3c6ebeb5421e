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

Reading over the network: asset hrefs may be local paths, ``file://``, ``http(s)://`` or
``s3://`` URLs (GDAL's ``/vsicurl/`` and ``/vsis3/``). Every read runs inside a rasterio/GDAL
environment built on the client when :func:`load` is called (:func:`gdal_environment`:
:data:`CLOUD_GDAL_OPTIONS`, then ``gdal=``, and an AWS session from ``aws=``) and carried with
the Dask graph into each task, so the same settings apply in the threaded scheduler, in a
``LocalCluster`` and on every worker of a remote cluster without configuring the workers. GDAL
retries transient HTTP errors itself (``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``,
``GDAL_HTTP_RETRY_CODES``); a read that still fails is an :class:`~xcloud.errors.AssetReadError`
or a read-failure record as above, never silently missing pixels.

Decoding threads: a read of a local file decodes with as many GDAL threads
(``GDAL_NUM_THREADS``: JPEG 2000 tiles, GeoTIFF blocks) as the Dask task may use without
oversubscribing the cores (:func:`xcloud.engine.threads_per_task`: all cores under the
synchronous scheduler, ``cores // num_workers`` under the threaded one, one in a
``distributed`` worker); a read over the network always decodes in its own thread (see
:data:`CLOUD_GDAL_OPTIONS`). ``gdal={"GDAL_NUM_THREADS": ...}`` fixes the number instead.

Reading again at another resolution: this process remembers the :class:`LoadRecipe` each
Dataset was made with, under the names of its Dask arrays (:func:`recipe_of` finds it from
the data, or a selection of them); :mod:`xcloud.data.levels` reads the same items on a coarser
grid from the files' overviews or JPEG 2000 resolution levels.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import xarray as xr

from .._optional import import_optional
from .._threads import threads_per_task
from ..errors import AssetReadError, AssetReadWarning, StacError
from .bands import SENTINEL2_BANDS, canonical_band_name
from .items import as_items, common_bands, harmonize_item, item_radiometry
from .radiometry import Radiometry, processing_baseline, processing_level

DEFAULT_CHUNK = 1024
"""Spatial chunk in pixels (``load`` and ``predict``): a full 10 m tile in 1024 px chunks is
masked in under 4 GiB, about as fast as in 2048 px chunks (benchmarks/bench_memory.py)."""

__all__ = ["AWS_OPTIONS", "CLOUD_GDAL_OPTIONS", "DEFAULT_CHUNK", "PROCESSING_LEVEL_ATTR",
           "RECIPES_KEPT", "SOURCE_ITEMS_ATTR", "LoadRecipe", "ReadFailure",
           "gdal_environment", "load", "recipe_of", "take_read_failures"]

CLOUD_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the asset's folder per open
    "GDAL_HTTP_MAX_RETRY": "5",  # transient HTTP errors: retried, pausing 0.5, 1, 2, 4, 8 s
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_TIMEOUT": "120",  # seconds for one request, then a retry
    # decode in the reading thread: an error in a decoder thread of GDAL's (a JPEG 2000 tile
    # cut short by a dropped connection) is only printed, and the read returns wrong pixels
    "GDAL_NUM_THREADS": "1",
}
"""GDAL options every read of :func:`load` runs with (``gdal=`` overrides or adds to them):
odc-stac's cloud defaults plus retries of HTTP 429/500/502/503/504 and of dropped connections
(GDAL's ``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``, ``GDAL_HTTP_RETRY_CODES``) and
request timeouts, and decoding in the reading thread (``GDAL_NUM_THREADS=1``: Dask runs the
reads in parallel; an error in one of GDAL's own decoder threads is lost, leaving wrong
pixels)."""

AWS_OPTIONS = ("aws_unsigned", "requester_pays", "region_name", "endpoint_url", "profile_name",
               "aws_access_key_id", "aws_secret_access_key", "aws_session_token")
"""Keys of ``aws=`` (those of rasterio's ``AWSSession``): ``aws_unsigned=True`` for
public buckets, ``requester_pays=True`` for requester-pays buckets (the requester, you, pays
the transfer), ``region_name``, ``endpoint_url`` (an S3-compatible server), a profile or keys
(better: credentials from the workers' environment or instance role, so that no secret travels
with the Dask graph)."""

SOURCE_ITEMS_ATTR = "source_items"
"""Dataset/mask attribute listing the ids of the STAC items the data came from."""
PROCESSING_LEVEL_ATTR = "xcloud:processing_level"
"""Attribute of loaded data: the items' processing level, ``"L1C"`` or ``"L2A"``."""

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


_NETWORK_SCHEMES = ("http", "https", "s3", "gs", "gcs", "az", "abfs", "abfss", "azure", "oss")


def _is_network_href(href: str) -> bool:
    scheme = href.split("://", 1)[0].lower() if "://" in href else ""
    return scheme in _NETWORK_SCHEMES or href.startswith(("/vsicurl", "/vsis3", "/vsigs",
                                                          "/vsiaz", "/vsiadls", "/vsioss"))


_VSI_PREFIXES = {"http": "/vsicurl/http", "https": "/vsicurl/https", "s3": "/vsis3",
                 "gs": "/vsigs", "gcs": "/vsigs", "az": "/vsiaz", "azure": "/vsiaz",
                 "abfs": "/vsiadls", "abfss": "/vsiadls", "oss": "/vsioss"}


@functools.cache
def _gdal_cache_clearer() -> Any:
    """GDAL's ``VSICurlPartialClearCache`` from the libgdal rasterio runs on, or None.

    rasterio does not wrap it; the library is found where this process mapped it (Linux), in
    rasterio's wheel, or by name, and opened again with ctypes (the same loaded copy).
    """
    import ctypes
    import ctypes.util
    import glob
    import os

    import rasterio

    candidates = []
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        candidates += [line.split()[-1] for line in maps if "libgdal" in line
                       and line.split()[-1].startswith("/")]
    base = os.path.dirname(os.path.dirname(rasterio.__file__))
    candidates += sorted(glob.glob(os.path.join(base, "rasterio.libs", "libgdal*")))
    candidates += [name for name in [ctypes.util.find_library("gdal")] if name]
    for candidate in candidates:
        try:
            function = ctypes.CDLL(candidate).VSICurlPartialClearCache
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [ctypes.c_char_p], None
        return function
    return None


def _forget_cached_bytes(href: str) -> None:
    """Drop what GDAL cached of a network file: GDAL keeps the bytes of an answer that was cut
    short in its per-process cache, and every later read of the file would fail (or decode
    wrong bytes) without asking the server again."""
    scheme, _, rest = href.partition("://")
    prefix = _VSI_PREFIXES.get(scheme.lower())
    clear = _gdal_cache_clearer()
    if clear is None:
        return
    if href.startswith("/vsi"):
        clear(href.encode())
    elif prefix is not None:
        clear(f"{prefix}://{rest}".encode() if prefix.startswith("/vsicurl/")
              else f"{prefix}/{rest}".encode())


def _describe(error: BaseException) -> str:
    """The error and its causes in one line (rasterio's 'Read failed' hides the reason)."""
    parts, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    return ": ".join(parts) or type(error).__name__


@dataclass(frozen=True)
class _ReadPolicy:
    strict: bool
    retries: int = 0  # extra reads of a network asset after a failed one
    delay: float = 0.5  # seconds before the first extra read, doubled for each further one
    decode_threads: bool = True  # False where the user fixed GDAL_NUM_THREADS (gdal=)


@contextmanager
def _decode_threads(policy: _ReadPolicy, network: bool) -> Iterator[None]:
    """GDAL's decoding threads for one read of a local file: the cores this Dask task may use
    (:func:`~xcloud._threads.threads_per_task`); a network read keeps one (an error in a
    decoder thread is lost: wrong pixels), as does a number the user set."""
    threads = threads_per_task() if policy.decode_threads and not network else 1
    if threads <= 1:
        yield
        return
    import rasterio

    with rasterio.Env(GDAL_NUM_THREADS=str(threads)):
        yield


class _CheckedReader:
    """An odc reader whose read failures become no data and a record, or AssetReadError.

    A failed read of a network asset is read again ``policy.retries`` times first: GDAL
    retries HTTP errors itself, but not a connection dropped in the middle of a body, and it
    keeps the bytes of such a cut answer in its cache, so the cache of the file is dropped
    after each failed read (also the last: later chunks read it afresh).
    """

    def __init__(self, reader: Any, source: tuple[str, str], href: str,
                 policy: _ReadPolicy) -> None:
        self._reader, self._source, self._href, self._policy = reader, source, href, policy

    def read(self, cfg: Any, dst_geobox: Any, *, dst: Any = None,
             selection: Any = None) -> tuple[Any, Any]:
        policy = self._policy
        network = _is_network_href(self._href)
        attempts = 1 + (policy.retries if network else 0)
        for attempt in range(attempts):
            try:
                with _decode_threads(policy, network):
                    return self._reader.read(cfg, dst_geobox, dst=dst, selection=selection)
            # any failure: rasterio/GDAL errors, OSError, and e.g. odc-geo's AssertionError on
            # a GeoTIFF cut inside its tags (it opens without a CRS)
            except Exception as error:
                if network:
                    _forget_cached_bytes(self._href)
                if attempt + 1 < attempts:
                    time.sleep(min(policy.delay * 2.0**attempt, 30.0))
                    continue
                self._failed(error, attempts, dst_geobox)
        empty = dst[0:0, 0:0] if dst is not None else np.empty((0, 0), cfg.dtype)
        return np.s_[0:0, 0:0], empty  # nothing read: the chunk keeps its no-data fill

    def _failed(self, error: Exception, attempts: int, dst_geobox: Any) -> None:
        item, band = self._source
        reason = _describe(error) + (f" (after {attempts} reads)" if attempts > 1 else "")
        if self._policy.strict:
            raise AssetReadError(
                f"cannot read band {band} of item {item!r} from {self._href}: {reason}. "
                "The file is missing, truncated or corrupt, or the server failed: fetch it "
                "again, or load with strict=False to mark its pixels as no data and record "
                "the failure."
            ) from error
        _record_failure(ReadFailure(item, band, self._href, reason,
                                    str(dst_geobox.boundingbox)))


class _LevelReader:
    """Reads one reduced-resolution level of a file (GDAL overview ``level``: a GeoTIFF
    overview or a JPEG 2000 resolution level) pixel for pixel: the destination grid is a
    window of that level's own grid (as GDAL reports it), so nothing is resampled and no
    other level is ever decoded."""

    def __init__(self, src: Any, level: int) -> None:
        self._src, self._level = src, level

    def read(self, cfg: Any, dst_geobox: Any, *, dst: Any = None,
             selection: Any = None) -> tuple[Any, Any]:
        import rasterio
        from rasterio.windows import Window

        band = int(self._src.band or 1)
        with rasterio.open(self._src.uri, "r", sharing=False,
                           overview_level=self._level) as source:
            first = dst_geobox.affine  # the centre of the first pixel, on the level's grid
            row, column = source.index(first.c + first.a / 2, first.f + first.e / 2)
            height, width = dst_geobox.shape.yx
            top, left = max(row, 0), max(column, 0)
            bottom, right = min(row + height, source.height), min(column + width, source.width)
            dtype = np.dtype(cfg.dtype or source.dtypes[band - 1])
            if bottom <= top or right <= left:
                return np.s_[0:0, 0:0], np.empty((0, 0), dtype)
            roi = np.s_[top - row:bottom - row, left - column:right - column]
            pixels = source.read(band, window=Window(left, top, right - left, bottom - top))
            nodata = cfg.src_nodata_override if cfg.src_nodata_override is not None else \
                source.nodatavals[band - 1]
        out = dst[roi] if dst is not None else np.empty(pixels.shape, dtype)
        np.copyto(out, pixels, casting="unsafe")
        fill = cfg.fill_value if cfg.fill_value is not None else nodata
        if nodata is not None and fill is not None and not _same_value(nodata, fill):
            np.copyto(out, fill, where=pixels == nodata, casting="unsafe")
        return roi, out


def _same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


class _CheckedDriver:
    """odc-stac's rasterio driver with :class:`_CheckedReader` readers (picklable).

    ``levels`` (href -> GDAL overview index) reads those files' reduced-resolution levels
    with :class:`_LevelReader` instead, onto a grid that must be the level's own.
    """

    def __init__(self, sources: Mapping[str, tuple[str, str]], strict: bool,
                 env: Mapping[str, Any] | None = None, read_retries: int = 0,
                 decode_threads: bool = True) -> None:
        from odc.loader import RioDriver
        from odc.stac._mdtools import StacAuxReader

        self._rio = RioDriver(aux_reader=StacAuxReader())
        self._sources = dict(sources)
        self._env = dict(env or {})
        delay = float(self._env.get("GDAL_HTTP_RETRY_DELAY", 0.5))
        self._policy = _ReadPolicy(strict, read_retries, delay, decode_threads)
        self._levels: dict[str, int] = {}

    def reading_levels(self, levels: Mapping[str, int]) -> _CheckedDriver:
        """A copy that reads the GDAL overview ``levels[href]`` of the files it names."""
        copy = object.__new__(_CheckedDriver)
        copy.__dict__.update(self.__dict__)
        copy._levels = dict(levels)
        return copy

    def new_load(self, geobox: Any, *, chunks: Any = None) -> Any:
        return self._rio.new_load(geobox, chunks=chunks)

    def finalise_load(self, load_state: Any) -> Any:
        return self._rio.finalise_load(load_state)

    def capture_env(self) -> dict[str, Any]:
        """odc's captured rasterio environment with xcloud's settings on top: travels with the
        graph, restored around every read in every task (thread, process or remote worker)."""
        return {**self._rio.capture_env(), **self._env}

    @contextmanager
    def restore_env(self, env: dict[str, Any], load_state: Any) -> Iterator[Any]:
        with self._rio.restore_env(env, load_state) as context:
            yield context

    def open(self, src: Any, ctx: Any) -> _CheckedReader:
        source = self._sources.get(src.uri, (src.uri, str(src.band)))
        level = self._levels.get(src.uri)
        reader = self._rio.open(src, ctx) if level is None else _LevelReader(src, level)
        return _CheckedReader(reader, source, src.uri, self._policy)

    @contextmanager
    def environment(self) -> Iterator[None]:
        """The GDAL environment (and AWS session) of the reads, in this thread."""
        state = self._rio.new_load(cast(Any, None))  # no grid: only the environment
        with self._rio.restore_env(self.capture_env(), state):
            yield

    @property
    def md_parser(self) -> Any:
        return self._rio.md_parser

    @property
    def dask_reader(self) -> Any:
        return self._rio.dask_reader

    @property
    def aux_reader(self) -> Any:
        return self._rio.aux_reader


def _gdal_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "YES" if value else "NO"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"gdal={{{key!r}: {value!r}}}: GDAL options take strings, numbers or "
                     "booleans")


def gdal_environment(gdal: Mapping[str, Any] | None = None,
                     aws: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The rasterio/GDAL environment the reads of :func:`load` run in.

    Parameters
    ----------
    gdal
        GDAL configuration options added to (or replacing) :data:`CLOUD_GDAL_OPTIONS`, e.g.
        ``{"GDAL_HTTP_MAX_RETRY": 10}``, ``{"GDAL_HTTP_HEADERS": "Authorization: Bearer ..."}``
        or, for an S3-compatible server, ``{"AWS_S3_ENDPOINT": "minio:9000", "AWS_HTTPS":
        "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}``. Booleans become ``YES``/``NO``.
    aws
        Arguments of an AWS session for ``s3://`` hrefs (:data:`AWS_OPTIONS`), e.g.
        ``{"requester_pays": True}`` or ``{"aws_unsigned": True}``. Without it, GDAL finds
        credentials where AWS tools do (environment, profile, instance role) in the process
        that reads.

    Returns
    -------
    dict
        GDAL options, and the AWS session's arguments under ``"_aws"`` (odc-stac's key).

    Raises
    ------
    ValueError
        An option name that is not an upper-case GDAL name, a value that is not a string,
        number or boolean, or an ``aws`` key that :data:`AWS_OPTIONS` does not list.
    """
    env: dict[str, Any] = dict(CLOUD_GDAL_OPTIONS)
    for key, value in (gdal or {}).items():
        if not isinstance(key, str) or not key.replace("_", "").isalnum() or key.upper() != key:
            raise ValueError(f"gdal= takes GDAL configuration option names such as "
                             f"'GDAL_HTTP_MAX_RETRY', got {key!r}")
        env[key] = _gdal_value(key, value)
    if aws:
        unknown = sorted(set(aws) - set(AWS_OPTIONS))
        if unknown:
            raise ValueError(f"aws= does not take {unknown}; it takes {', '.join(AWS_OPTIONS)}")
        env["_aws"] = dict(aws)
    return env


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
    gdal: Mapping[str, Any] | None = None,
    aws: Mapping[str, Any] | None = None,
    read_retries: int = 2,
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
        :class:`~xcloud.errors.AssetReadError`. A read over HTTP(S) or S3 that fails with a
        transient error (HTTP 429/500/502/503/504, a dropped connection, a timeout) is
        retried by GDAL first (:data:`CLOUD_GDAL_OPTIONS`); only a read that still fails
        counts as failed, and the record names its URL.
    gdal, aws
        GDAL options and AWS session arguments for reading ``http(s)://`` and ``s3://``
        assets (:func:`gdal_environment`): ``aws={"requester_pays": True}`` for
        requester-pays buckets, ``aws={"aws_unsigned": True}`` for anonymous reads. They
        travel with the Dask graph, so every worker reads with them.
    read_retries
        How many times a failed read of a network asset (``http(s)://``, ``s3://``...) is
        read again, pausing ``GDAL_HTTP_RETRY_DELAY`` seconds, doubled each time, before it
        counts as failed: GDAL retries HTTP errors but not a connection dropped in the middle
        of an answer. Local files are read once.

    Returns
    -------
    xarray.Dataset
        Dims ``(time, y, x)``, coordinates and ``spatial_ref`` from odc-stac; reflectance as
        float32 with NaN for no data (SCL stays uint8); attribute ``source_items``.
    """
    odc_stac = import_optional("odc.stac", extra="geo")
    env = gdal_environment(gdal, aws)  # bad options fail here, before anything is read
    if read_retries < 0:
        raise ValueError(f"read_retries must be >= 0, got {read_retries}")
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
    driver = _CheckedDriver(_asset_sources(harmonized, names), strict,
                            env=env, read_retries=int(read_retries),
                            decode_threads="GDAL_NUM_THREADS" not in (gdal or {}))
    plan = _LoadPlan(geobox, native_crs, chunk, resampling, driver)
    groups = _group_items(harmonized, groupby)
    slices = [_load_group(group, names, radiometry, plan) for group in groups]
    dataset = xr.concat(slices, dim="time", combine_attrs="override") if len(slices) > 1 \
        else slices[0]
    dataset.attrs[SOURCE_ITEMS_ATTR] = [item.id for group in groups for item in group]
    dataset.attrs.update(_processing_attrs(harmonized))
    recipe = LoadRecipe(
        groups=tuple(tuple(group) for group in groups), bands=tuple(names),
        times=tuple(dataset["time"].values), geobox=geobox, native_crs=native_crs,
        arrays={name: dataset[name].data.name for name in names}, plan=plan,
        radiometry=radiometry,
    )
    _remember(recipe)
    return dataset


def _processing_attrs(items: Sequence[Any]) -> dict[str, Any]:
    """The items' processing level (``L1C``/``L2A``; a list when they differ) and baselines,
    for the checks of :func:`xcloud.predict` and for the record."""
    levels = sorted({level for item in items
                     if (level := processing_level(item.properties, item.collection_id))})
    baselines = sorted({f"{b[0]:02d}.{b[1]:02d}" for item in items
                        if (b := processing_baseline(item.properties)) is not None})
    attrs: dict[str, Any] = {}
    if levels:
        attrs[PROCESSING_LEVEL_ATTR] = levels[0] if len(levels) == 1 else levels
    if baselines:
        attrs["xcloud:processing_baselines"] = baselines
    return attrs


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
    coords: dict[Hashable, Any] = dict(xr_coords(plan.geobox, crs_coord_name="spatial_ref"))
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
    import dask.array as da

    return da.map_blocks(_reflectance_block, data, dtype=np.float32,
                         scale=np.float32(radiometry.scale), offset=np.float32(radiometry.offset),
                         nodata=radiometry.nodata)


def _reflectance_block(dn: np.ndarray, *, scale: np.float32, offset: np.float32,
                       nodata: float) -> np.ndarray:
    """``dn * scale + offset`` in float32, NaN where ``dn`` is ``nodata`` (one Dask layer
    where the elementwise operations made five)."""
    values = dn.astype(np.float32) * scale + offset
    values[dn == nodata] = np.nan
    return values


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


# -- reading the same items again --------------------------------------------------------------

_RECIPES: OrderedDict[str, LoadRecipe] = OrderedDict()  # loaded array's Dask name -> recipe
_RECIPES_LOCK = threading.Lock()
RECIPES_KEPT = 4096
"""How many loaded arrays (one per band and load) a process remembers the recipe of; the
oldest are forgotten (data loaded that long ago are masked at their own resolution only)."""
# dask layers that select or regroup values without changing one (the rest change them)
_SELECTION_LAYERS = ("getitem-", "rechunk-merge-", "rechunk-split-", "rechunk-p2p-")


@dataclass(frozen=True)
class LoadRecipe:
    """How :func:`load` made a Dataset: enough to read the same items again on another grid.

    ``groups`` holds the (harmonised) items of each time step, ``times`` their time
    coordinates, ``geobox`` the output grid and ``native_crs`` whether it is in the items' own
    CRS (their files' pixel grids line up with it). The rest is private to :func:`load`.
    """

    groups: tuple[tuple[Any, ...], ...]
    bands: tuple[str, ...]
    times: tuple[Any, ...]
    geobox: Any
    native_crs: bool
    arrays: Mapping[str, str] = field(repr=False)  # variable -> name of its Dask array
    plan: _LoadPlan = field(repr=False)
    radiometry: Mapping[str, Mapping[str, Radiometry]] = field(repr=False)

    def hrefs(self, band: str) -> list[str]:
        """The files of ``band``, one per item, in the order of :attr:`groups`."""
        return [item.assets[band].get_absolute_href() or item.assets[band].href
                for group in self.groups for item in group]

    @property
    def chunk(self) -> int:
        """The spatial chunk of the loaded data, in its pixels."""
        return self.plan.chunk

    @property
    def resampling(self) -> str:
        """The method :func:`load` brought bands coarser than its grid onto it with."""
        return self.plan.resampling

    @property
    def loaded_geobox(self) -> Any:
        """The grid :func:`load` made (:attr:`geobox` is the part of it the data still hold)."""
        return self.plan.geobox

    def native_factor(self, band: str) -> int | None:
        """How :func:`load` read ``band``: on :attr:`loaded_geobox` zoomed out by this factor,
        then upsampled by it with :attr:`resampling` (1: read on the loaded grid itself);
        None where the time steps differ."""
        factors = {_native_factor(group[0], band, self.plan) for group in self.groups}
        return factors.pop() if len(factors) == 1 else None

    @contextmanager
    def environment(self) -> Iterator[None]:
        """The GDAL environment (and AWS session) the reads run in, in this thread: for
        opening the items' files on the client (e.g. to list their overviews)."""
        with self.plan.driver.environment():
            yield

    def read(self, band: str, geobox: Any, *, chunk: int,
             levels: Mapping[str, int] | None = None) -> Any:
        """``band`` of every time step on ``geobox``, lazily, as reflectance.

        Parameters
        ----------
        band
            A band of :attr:`bands`.
        geobox
            The grid to read onto. Without ``levels`` anything odc-stac reads (bands coarser
            than it are brought onto it as :func:`load` does when the ratio is an integer,
            ``recipe.resampling``); with ``levels``, a window of the GDAL overview grid of
            those files (read pixel for pixel).
        chunk
            Spatial chunk, in pixels of ``geobox``.
        levels
            href -> GDAL overview index of the files to read a reduced-resolution level of.

        Returns
        -------
        dask.array.Array
            float32 (time, y, x) reflectance, NaN for no data (class layers: uint8).
        """
        import dask.array as da

        plan = replace(self.plan, geobox=geobox, chunk=chunk,
                       driver=self.plan.driver.reading_levels(levels or {}))
        times = []
        for group in self.groups:
            factor = 1 if levels else _native_factor(group[0], band, plan)
            raw = _read(list(group), [band], plan, factor)[band]
            times.append(_to_output_grid(raw, self.radiometry[group[0].id][band], factor, plan))
        return da.concatenate(times, axis=0) if len(times) > 1 else times[0]

    def narrowed(self, times: Sequence[Any], geobox: Any) -> LoadRecipe:
        """The recipe of the time steps ``times`` (of :attr:`times`) on ``geobox``."""
        keep = [self.times.index(time) for time in times]
        return replace(self, groups=tuple(self.groups[k] for k in keep),
                       times=tuple(self.times[k] for k in keep), geobox=geobox)


def _remember(recipe: LoadRecipe) -> None:
    with _RECIPES_LOCK:
        for name in recipe.arrays.values():
            _RECIPES[name] = recipe
            _RECIPES.move_to_end(name)
        while len(_RECIPES) > RECIPES_KEPT:
            _RECIPES.popitem(last=False)


def _loaded_source(array: Any) -> str | None:
    """The name of the loaded array that the Dask ``array`` is, or only selects or rechunks
    (``isel``, ``sel``, ``chunk``: its values are the loaded values); None for anything else."""
    import dask.array as da

    if not isinstance(array, da.Array):
        return None
    graph = array.dask
    layer = array.name
    while layer not in _RECIPES:
        dependencies = graph.dependencies.get(layer, set())
        if not layer.startswith(_SELECTION_LAYERS) or len(dependencies) != 1:
            return None
        layer = next(iter(dependencies))
    return layer


def _window(geobox: Any, data: xr.Dataset) -> Any:
    """The window of ``geobox`` that ``data``'s coordinates cover, or None when they are not
    consecutive pixels of it."""
    ydim, xdim = geobox.dimensions
    if ydim not in data.coords or xdim not in data.coords:
        return None
    starts = []
    for axis, dim in ((0, ydim), (1, xdim)):
        centres = np.asarray(data[dim].values, dtype=np.float64)
        origin = geobox.affine.f if axis == 0 else geobox.affine.c
        size = geobox.affine.e if axis == 0 else geobox.affine.a
        index = (centres - origin) / size - 0.5
        first = round(float(index[0])) if index.size else 0
        expected = first + np.arange(index.size)
        if (not index.size or first < 0 or first + index.size > geobox.shape[axis]
                or not np.allclose(index, expected, atol=1e-6)):
            return None
        starts.append(slice(first, first + index.size))
    return geobox[starts[0], starts[1]]


def recipe_of(data: xr.Dataset | xr.DataArray,
              bands: Sequence[str] | None = None) -> LoadRecipe | None:
    """The recipe of data that :func:`load` made in this process, narrowed to what ``data``
    still holds; None when that is not known.

    The rule: ``data`` is a Dataset that :func:`load` returned, or a selection of it
    (variables, ``isel``/``sel`` of time steps or a window of pixels, ``chunk``), whose
    variables ``bands`` (default: all) still hold the loaded values. Anything that changes a
    value (arithmetic, ``where``, ``fillna``, ``astype``), other coordinates, a Dataset
    assembled from pieces, a computed (numpy) Dataset, data pickled to another process, or
    loaded so long ago that the recipe was forgotten (:data:`RECIPES_KEPT`): None. Nothing is
    added to the data: the recipe is found from the names of their Dask arrays.

    Parameters
    ----------
    data
        What :func:`load` returned, or a selection of it.
    bands
        The variables that must hold loaded values (default: every data variable).

    Returns
    -------
    LoadRecipe or None
        Its ``times`` and ``geobox`` are those of ``data``.
    """
    if not isinstance(data, xr.Dataset):
        return None
    names = [str(name) for name in data.data_vars] if bands is None else list(bands)
    if not names or any(name not in data.data_vars for name in names):
        return None
    with _RECIPES_LOCK:
        sources = [_loaded_source(data[name].data) for name in names]
        recipes = {id(_RECIPES[s]): _RECIPES[s] for s in sources if s is not None}
    if None in sources or len(recipes) != 1:
        return None
    recipe = next(iter(recipes.values()))
    if any(recipe.arrays.get(name) != source for name, source in zip(names, sources,
                                                                     strict=True)):
        return None  # a variable holding another band's values
    times = np.atleast_1d(data["time"].values) if "time" in data.coords else ()
    if len(times) == 0 or any(time not in recipe.times for time in times):
        return None
    geobox = _window(recipe.geobox, data)
    return None if geobox is None else recipe.narrowed(list(times), geobox)
