"""Reading STAC items again on a coarser grid, from the files' overviews or JPEG 2000 levels.

:func:`read_coarser` reads the bands of a Dataset that :func:`xcloud.load` made on the grid
coarser by an integer ``factor`` (same origin: each coarse pixel is ``factor`` x ``factor``
pixels of the loaded grid), each band from the coarsest reduced-resolution level of its files
that still serves that grid: a GeoTIFF overview (cloud-optimised GeoTIFFs, as Earth Search
serves Level-2A) or a JPEG 2000 resolution level (as Sentinel-2 products are encoded; GDAL's
JPEG 2000 drivers show them as overviews). A GeoTIFF overview serves where a whole number of
its pixels spans a coarse pixel; a JPEG 2000 level where its pixels are at most a quarter of a
coarse pixel, else (no level that fine) at most two thirds of one (:func:`choose_levels`).
What each file offers is read from the file itself
(:func:`file_levels`) before anything is chosen: a file without levels is read at full
resolution and averaged down (:func:`~xcloud.data.resample.downsample_mean`), never through
GDAL's decimating read, which on a JPEG 2000 file without levels took 6.2 s against 0.21 s
for the full-resolution read (measured).

From a level, each coarse pixel is the area-weighted mean of the level pixels it overlaps
(ignoring NaN; the weights are the overlapped fractions of the coarse pixel), with each level
pixel taken as the mean of the full-resolution pixels it stands for:

- a GeoTIFF overview pixel covers the footprint GDAL gives it (its averaging window when the
  overview was made with ``AVERAGE``: the result is then the block mean, exactly where the
  coarse grid lines up with the overview);
- a JPEG 2000 level-``r`` sample (decimation ``d = 2**r``) is the wavelet low-pass centred on
  full-resolution pixel ``d * i`` (measured: a ramp's level values are its values at ``d * i``,
  not the means of pixels ``d * i`` to ``d * i + d - 1``), so it is taken as a ``d``-pixel
  footprint centred there, half a pixel less than ``(d - 1) / 2`` pixels before GDAL's.

Without a serving level, a band is read as :func:`xcloud.load` reads it (20 m and 60 m bands
brought onto the loaded grid with its resampling) and block-averaged: the values the
full-resolution path averages to the model's grid, to the bit. It is read on its own native
grid and each coarse chunk is made by one task from the native pixels under it (upsampled,
then averaged, inside the task), so no loaded-resolution array passes between tasks.

Each coarse chunk is one task on the read blocks under it (their slices joined in the task):
no rechunking, and no block decoded twice. The items of a time step must share the
band's file grid (one tile per time step) to be read from levels; otherwise full resolution.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import StacError
from .load import LoadRecipe, recipe_of

__all__ = ["MIN_CHUNK", "WAVELET_DRIVERS", "FileLevels", "LevelChoice", "choose_levels",
           "coarse_grid", "file_levels", "read_coarser"]

MIN_CHUNK = 128
"""Smallest default spatial chunk of :func:`read_coarser`'s result, in coarse pixels."""
WAVELET_DRIVERS = ("JP2OpenJPEG", "JP2KAK", "JP2ECW", "JPEG2000", "JP2MrSID")
"""GDAL drivers whose overviews are JPEG 2000 resolution levels (wavelet low-pass samples)."""


@dataclass(frozen=True)
class FileLevels:
    """What one raster file offers: its driver, grid and reduced-resolution levels.

    ``decimations`` are GDAL's overview factors (``src.overviews(1)``), finest first: overview
    ``k`` (GDAL's ``overview_level=k``) has about ``1 / decimations[k]`` of the pixels along
    each axis. ``transform`` is the full-resolution grid's affine (6 numbers).
    """

    driver: str
    shape: tuple[int, int]
    transform: tuple[float, ...]
    decimations: tuple[int, ...]

    @property
    def wavelet(self) -> bool:
        """Whether the levels are JPEG 2000 resolution levels (see the module's notes)."""
        return self.driver in WAVELET_DRIVERS


@dataclass(frozen=True)
class LevelChoice:
    """Where one band is read from: GDAL overview ``index`` (None: full resolution), its grid
    as GDAL gives it (``shape``, ``transform``) and the footprint of its pixel 0 along each
    axis (``start``: x, y of its first corner; ``step``: signed pixel size x, y)."""

    index: int | None
    decimation: int = 1
    shape: tuple[int, int] = (0, 0)
    transform: tuple[float, ...] = ()
    start: tuple[float, float] = (0.0, 0.0)
    step: tuple[float, float] = (0.0, 0.0)
    block: tuple[int, int] = (512, 512)
    """The level's blocks (JPEG 2000 tiles at that level): reads are cut along them, so that
    no block is decoded twice."""


@functools.lru_cache(maxsize=1024)
def _cached_levels(href: str) -> FileLevels:
    import rasterio

    with rasterio.open(href) as source:
        return FileLevels(source.driver, (source.height, source.width),
                          tuple(source.transform)[:6], tuple(source.overviews(1)))


def file_levels(href: str) -> FileLevels:
    """What the file at ``href`` offers (opened with rasterio in the current GDAL environment;
    remembered per href in this process).

    Parameters
    ----------
    href
        A path or URL rasterio opens (``file://``, ``https://``, ``s3://`` and GDAL's
        ``/vsi...`` names).

    Returns
    -------
    FileLevels
    """
    return _cached_levels(href)


def _level_grid(href: str, index: int
                ) -> tuple[tuple[int, int], tuple[float, ...], tuple[int, int]]:
    """Shape, affine (as GDAL gives it) and block shape of overview ``index``."""
    import rasterio

    with rasterio.open(href, overview_level=index) as source:
        block = source.block_shapes[0]
        return (source.height, source.width), tuple(source.transform)[:6], \
            (int(block[0]), int(block[1]))


def _choice(levels: FileLevels, index: int, href: str) -> LevelChoice:
    """The footprint of overview ``index``'s pixels (see the module's notes)."""
    shape, transform, block = _level_grid(href, index)
    decimation = levels.decimations[index]
    if levels.wavelet:
        a, _, c, _, e, f = levels.transform
        start = (c + (0.5 - decimation / 2) * a, f + (0.5 - decimation / 2) * e)
        step = (decimation * a, decimation * e)
    else:
        start, step = (transform[2], transform[5]), (transform[0], transform[4])
    return LevelChoice(index, decimation, shape, transform, start, step, block)


def choose_levels(recipe: LoadRecipe, factor: int, bands: Sequence[str]
                  ) -> dict[str, LevelChoice]:
    """The level each band is read from for a grid ``factor`` times coarser than the
    recipe's: the one that serves that grid best (see the module's notes), offered alike by
    every file of the band (same driver, grid and levels); else full resolution.

    Parameters
    ----------
    recipe
        What :func:`xcloud.load` made the data with (:func:`~xcloud.data.load.recipe_of`).
    factor
        How many loaded pixels a coarse pixel spans along each axis.
    bands
        The bands to read.

    Returns
    -------
    dict
        Band -> :class:`LevelChoice` (``index`` None: read at full resolution).
    """
    target = factor * abs(recipe.geobox.affine.a)
    return {band: _band_choice(recipe, band, target) for band in bands}


def _band_choice(recipe: LoadRecipe, band: str, target: float) -> LevelChoice:
    hrefs = recipe.hrefs(band)
    if not recipe.native_crs or not hrefs:
        return LevelChoice(None)
    with recipe.environment():
        try:
            offered = {file_levels(href) for href in hrefs}
            level = _coarsest_serving(offered.pop(), target) if len(offered) == 1 else None
            return LevelChoice(None) if level is None else _choice(*level, hrefs[0])
        except Exception:  # unreadable here: the read tasks report it (load's policy)
            return LevelChoice(None)


def _coarsest_serving(levels: FileLevels, target: float) -> tuple[FileLevels, int] | None:
    """The level (GDAL overview index) of ``levels`` that serves a grid of ``target`` metres
    best, or None.

    A GeoTIFF overview serves where a whole number of its pixels spans a coarse pixel (its
    block means are then exact). A JPEG 2000 level is a smoothed sample, not a block mean
    (measured on the real scene's bands: 1.5-8 % off the block means at the coarse pixel's
    own size, 0.1-0.4 % at a quarter of it), so the coarsest level whose pixels are at most a
    quarter of a coarse pixel serves; where none is that fine, the coarsest at most two thirds
    of a coarse pixel (a 20 m level for a 30 m grid: 0.4-0.8 % off, area-weighted), which a
    GeoTIFF would not be worth: its full read costs little more than its overview's, while
    a JPEG 2000 level decodes in a fraction of the full decode (0.18 s against 0.67 s at
    level 1, 2048² px).
    """
    native = abs(levels.transform[0])
    ratios = [target / (d * native) for d in levels.decimations]
    if not levels.wavelet:
        exact = [k for k, r in enumerate(ratios)
                 if r >= 1 - 1e-9 and math.isclose(r, round(r), rel_tol=1e-6)]
        return (levels, exact[-1]) if exact else None
    fine = [k for k, r in enumerate(ratios) if r >= 4 - 1e-9]
    serving = fine or [k for k, r in enumerate(ratios) if r >= 1.5 - 1e-9]
    return (levels, serving[-1]) if serving else None


# -- area weights ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Taps:
    """For each coarse pixel along one axis: the level pixels it overlaps and their weights
    (fractions of the coarse pixel; padded with weight 0)."""

    index: np.ndarray  # (coarse pixels, taps) int64
    weight: np.ndarray  # (coarse pixels, taps) float64

    def window(self, span: slice, align: int = 1) -> tuple[int, int, _Taps]:
        """The level pixels (first, stop) the coarse pixels ``span`` need, ``first`` moved
        back to a multiple of ``align``, and their taps relative to ``first``."""
        index = self.index[span]
        first, stop = int(index.min()), int(index.max()) + 1
        first -= first % align
        return first, stop, _Taps(index - first, self.weight[span])


def _taps(offset: float, width: float, count: int, available: int) -> _Taps:
    """Coarse pixel ``j`` spans ``[j, j + 1)``; level pixel ``i`` spans ``[offset + i * width,
    offset + (i + 1) * width)`` (coarse-pixel units); level pixels ``0 .. available - 1``
    exist."""
    taps = math.ceil(1 / width) + 1
    first = np.floor((np.arange(count) - offset) / width).astype(np.int64)
    index = first[:, None] + np.arange(taps)[None, :]
    low = offset + index * width
    weight = np.clip(np.minimum(low + width, np.arange(count)[:, None] + 1.0)
                     - np.maximum(low, np.arange(count)[:, None]), 0.0, None)
    weight[(index < 0) | (index >= available)] = 0.0
    return _Taps(np.clip(index, 0, max(available - 1, 0)), weight)


def _area_mean_block(window: np.ndarray, rows: _Taps, columns: _Taps) -> np.ndarray:
    """The coarse pixels of one chunk from the level pixels under them (NaN ignored; NaN
    where no weight falls on a valid pixel)."""
    from .resample import weighted_mean  # numba loads when a level is read

    return weighted_mean(window, rows.index, rows.weight, columns.index, columns.weight)


def _spans(chunks: Sequence[int]) -> list[slice]:
    stops = np.cumsum(chunks).tolist()
    return [slice(stop - size, stop) for size, stop in zip(chunks, stops, strict=True)]


def _level_taps(choice: LevelChoice, coarse: Any) -> tuple[_Taps, _Taps]:
    """Rows and columns taps from the level's footprints onto the coarse grid's pixels."""
    affine = coarse.affine
    rows = _taps((choice.start[1] - affine.f) / affine.e, choice.step[1] / affine.e,
                 coarse.shape[0], choice.shape[0])
    columns = _taps((choice.start[0] - affine.c) / affine.a, choice.step[0] / affine.a,
                    coarse.shape[1], choice.shape[1])
    return rows, columns


def _read_level(recipe: LoadRecipe, band: str, choice: LevelChoice, coarse: Any,
                chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> Any:
    """``band`` on the coarse grid from the level ``choice``, lazily."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    rows, columns = _level_taps(choice, coarse)
    top, bottom, row_taps = rows.window(slice(None), align=choice.block[0])
    left, right, column_taps = columns.window(slice(None), align=choice.block[1])
    a, b, c, d, e, f = choice.transform
    grid = GeoBox((bottom - top, right - left),
                  Affine(a, b, c + left * a + top * b, d, e, f + left * d + top * e),
                  recipe.geobox.crs)
    # whole blocks per read chunk (the grid starts on a block's first row and column)
    footprint = max(chunks[0][0], chunks[1][0]) * abs(coarse.affine.a / a)
    chunk = max(1, round(footprint / max(choice.block))) * max(choice.block)
    levels = {href: int(choice.index) for href in recipe.hrefs(band)}  # type: ignore[arg-type]
    level = recipe.read(band, grid, chunk=chunk, levels=levels)
    return _windowed(level, [row_taps.window(span) for span in _spans(chunks[0])],
                     [column_taps.window(span) for span in _spans(chunks[1])],
                     _area_mean_block, chunks, "area-mean")


_Window = tuple[int, int, Any]
"""Along one axis, for one chunk of the result: the source pixels it needs (first, stop) and
what the chunk's function takes for that axis."""


def _windowed(source: Any, rows: Sequence[_Window], columns: Sequence[_Window],
              function: Callable[[np.ndarray, Any, Any], np.ndarray],
              chunks: tuple[tuple[int, ...], tuple[int, ...]], prefix: str) -> Any:
    """Chunks ``chunks`` of float32 (time, y, x) made from the (time, y, x) dask ``source``:
    chunk ``(i, j)`` is ``function(window, rows[i][2], columns[j][2])`` on the ``window`` of
    source pixels ``rows[i][:2]`` x ``columns[j][:2]``, one task each on the source blocks
    under it (no rechunking: the blocks' slices are joined inside the task)."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = f"{prefix}-" + tokenize(source.name, function, rows, columns, chunks)
    row_cuts = [_cuts(first, stop, source.chunks[1]) for first, stop, _ in rows]
    column_cuts = [_cuts(first, stop, source.chunks[2]) for first, stop, _ in columns]
    graph: dict[Any, Any] = {}
    for t in range(len(source.chunks[0])):
        for i, (row_blocks, (_, _, row_argument)) in enumerate(zip(row_cuts, rows, strict=True)):
            for j, (column_blocks, (_, _, column_argument)) in enumerate(
                    zip(column_cuts, columns, strict=True)):
                keys = [[(source.name, t, bi, bj) for bj, _ in column_blocks]
                        for bi, _ in row_blocks]
                graph[(name, t, i, j)] = (_joined, function, keys,
                                          [cut for _, cut in row_blocks],
                                          [cut for _, cut in column_blocks],
                                          row_argument, column_argument)
    layers = HighLevelGraph.from_collections(name, graph, dependencies=[source])
    return da.Array(layers, name, chunks=(source.chunks[0], *chunks), dtype=np.float32,
                    meta=np.empty((0, 0, 0), np.float32))


def _cuts(first: int, stop: int, block_chunks: Sequence[int]) -> list[tuple[int, slice]]:
    """Along one axis: the blocks under source pixels ``first .. stop - 1``, each with the
    slice of its pixels among them."""
    bounds = np.cumsum([0, *block_chunks]).tolist()
    return [(k, slice(max(first, low) - low, min(stop, high) - low))
            for k, (low, high) in enumerate(itertools.pairwise(bounds))
            if low < stop and high > first]


def _joined(function: Callable[[np.ndarray, Any, Any], np.ndarray],
            blocks: list[list[np.ndarray]], rows_cut: list[slice], columns_cut: list[slice],
            rows: Any, columns: Any) -> np.ndarray:
    """``function`` on the needed pixels (``rows_cut`` x ``columns_cut``) of a grid of
    (time, y, x) source blocks, joined."""
    window = np.block([[block[:, row, column] for block, column in zip(line, columns_cut,
                                                                       strict=True)]
                       for line, row in zip(blocks, rows_cut, strict=True)])
    return function(window, rows, columns)


_MARGIN = 4
"""Native pixels read around a chunk's own: more than any upsampling kernel reaches (sinc's
three lobes), so that a chunk's loaded pixels are those of the whole band."""


def _upsampled_mean(window: np.ndarray, rows: slice, columns: slice, *, method: str,
                    native: int, factor: int) -> np.ndarray:
    """The coarse pixels of one chunk: the native ``window`` brought onto the loaded grid as
    :func:`xcloud.load` does (``native`` times finer, with ``method``), the chunk's loaded
    pixels (``rows`` x ``columns``, counted from the window's first native pixel) kept, then
    block-averaged by ``factor`` (NaN ignored)."""
    from .resample import downsample_mean, resample

    if native > 1:
        window = resample(window, native, method=method)
    return downsample_mean(window[:, rows, columns], factor)


def _native_window(span: slice, offset: int, available: int, native: int, factor: int,
                   size: int) -> tuple[int, int, slice]:
    """Native pixels (first, stop; of a native grid with ``available`` pixels) for the coarse
    pixels ``span`` of a selection starting ``offset`` loaded pixels into the loaded grid and
    ``size`` loaded pixels long, and the chunk's loaded pixels counted from ``first``'s."""
    low = offset + span.start * factor
    high = offset + min(span.stop * factor, size)
    first = max(low // native - _MARGIN, 0)
    stop = min((high - 1) // native + 1 + _MARGIN, available)
    return first, stop, slice(low - first * native, high - first * native)


def _read_full(recipe: LoadRecipe, band: str, variable: xr.DataArray, factor: int,
               chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> Any:
    """The loaded values (read at full resolution, coarser bands brought onto the grid as
    :func:`xcloud.load` does), block-averaged by ``factor``: the values the full-resolution
    path averages to the model's grid.

    Read again from the files on the band's native grid, each coarse chunk made by one task
    from the native pixels under it (upsampled in the task: no loaded-resolution array between
    tasks); the loaded array itself where that is not possible (a class layer, time steps
    read at different native resolutions, another resampling)."""
    from .resample import UPSAMPLING_METHODS

    native = recipe.native_factor(band) if variable.dtype == np.float32 else None
    if native is None or recipe.resampling not in UPSAMPLING_METHODS:
        return _average_loaded(variable, factor, chunks)
    loaded = recipe.loaded_geobox
    grid = loaded.zoom_out(native) if native > 1 else loaded
    offset = _offset(recipe.geobox, loaded)
    windows = [[_native_window(span, offset[axis], grid.shape[axis], native, factor,
                               recipe.geobox.shape[axis])
                for span in _spans(chunks[axis])] for axis in (0, 1)]
    (top, bottom), (left, right) = ((min(w[0] for w in axis), max(w[1] for w in axis))
                                    for axis in windows)
    source = recipe.read(band, grid[top:bottom, left:right],
                         chunk=max(1, math.ceil(recipe.chunk / native)))
    rows = [(first - top, stop - top, keep) for first, stop, keep in windows[0]]
    columns = [(first - left, stop - left, keep) for first, stop, keep in windows[1]]
    mean = functools.partial(_upsampled_mean, method=recipe.resampling, native=native,
                             factor=factor)
    return _windowed(source, rows, columns, mean, chunks, "full-mean")


def _offset(window: Any, grid: Any) -> tuple[int, int]:
    """Where the grid ``window`` starts in ``grid`` (rows, columns of ``grid``)."""
    column, row = ~grid.affine @ (window.affine.c, window.affine.f)
    return round(row), round(column)


def _average_loaded(variable: xr.DataArray, factor: int,
                    chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> Any:
    """The loaded values themselves, block-averaged by ``factor``."""
    from .resample import resample_dask

    fine = variable.data if "time" in variable.dims else variable.data[None]
    return resample_dask(fine, factor, method="mean").rechunk((1, *chunks))


def coarse_grid(recipe: LoadRecipe, factor: int) -> Any:
    """The grid ``factor`` times coarser than the recipe's, with the same origin."""
    return recipe.geobox.zoom_out(factor)


def read_coarser(data: xr.Dataset, factor: int, *, bands: Sequence[str] | None = None,
                 levels: bool = True, chunk: int | None = None) -> xr.Dataset:
    """The bands of ``data`` read again from their files on a grid ``factor`` times coarser.

    Parameters
    ----------
    data
        What :func:`xcloud.load` returned, or a selection of it (see
        :func:`~xcloud.data.load.recipe_of` for what keeps it readable again).
    factor
        Integer >= 1: each coarse pixel is ``factor`` x ``factor`` pixels of ``data``, from
        the same origin (a last, partial row or column of coarse pixels covers the rest).
    bands
        The variables to read (default: all of ``data``'s).
    levels
        Read from the files' overviews or JPEG 2000 resolution levels where they serve
        (default); ``False`` reads every band at full resolution and averages it down.
    chunk
        Spatial chunk of the result in coarse pixels (default: the loaded chunk divided by
        ``factor``, at least :data:`MIN_CHUNK`: as many tasks as the loaded data's, for the
        model to run in parallel on).

    Returns
    -------
    xarray.Dataset
        Lazy float32 reflectance (NaN for no data) with ``data``'s dimensions, time
        coordinates and attributes, on the coarse grid (coordinates and
        ``spatial_ref``). Its ``encoding["xcloud:levels"]`` maps each band to the GDAL
        overview index it is read from (None: full resolution).

    Raises
    ------
    StacError
        ``data`` is not (or no longer) what :func:`xcloud.load` made in this process.
    ValueError
        ``factor`` is not an integer >= 1.
    """
    from odc.geo.xr import xr_coords

    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    names = [str(name) for name in data.data_vars] if bands is None else list(bands)
    recipe = recipe_of(data, names)
    if recipe is None:
        raise StacError(
            "read_coarser() reads the files of data that xcloud.load made in this process, "
            "selected at most with isel/sel or [bands]; these data are not (or were changed "
            "since: arithmetic, where, a computed copy). Load the items with xcloud.load and "
            "pass what it returns, or average the data yourself"
        )
    coarse = coarse_grid(recipe, int(factor))
    size = chunk or max(MIN_CHUNK, math.ceil(recipe.chunk / factor))
    chunks = tuple(tuple(_chunk_sizes(n, size)) for n in coarse.shape.yx)
    choices = (choose_levels(recipe, int(factor), names) if levels
               else {name: LevelChoice(None) for name in names})
    variables = {}
    for name in names:
        choice = choices[name]
        array = (_read_level(recipe, name, choice, coarse, chunks)  # type: ignore[arg-type]
                 if choice.index is not None
                 else _read_full(recipe, name, data[name], int(factor),
                                 chunks))  # type: ignore[arg-type]
        variables[name] = _like(data[name], array)
    coords = dict(xr_coords(coarse, crs_coord_name="spatial_ref"))
    out = xr.Dataset(variables, coords={**coords, **_other_coords(data, coarse)})
    out.attrs.update(data.attrs)
    out.encoding["xcloud:levels"] = {name: choices[name].index for name in names}
    return out


def _chunk_sizes(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)] or [0]


def _like(variable: xr.DataArray, array: Any) -> tuple[tuple[str, ...], Any]:
    """``array`` (time, y, x) with ``variable``'s dimensions (time dropped where it has none)."""
    dims = tuple(str(d) for d in variable.dims)
    return dims, (array if "time" in dims else array[0])


def _other_coords(data: xr.Dataset, coarse: Any) -> Mapping[str, Any]:
    """``data``'s coordinates that are not along the grid (time, scalar coordinates)."""
    spatial = set(coarse.dimensions) | {"spatial_ref"}
    return {str(name): coord for name, coord in data.coords.items()
            if str(name) not in spatial and not (set(map(str, coord.dims)) & spatial)}
