"""``predict``: a lazy, chunked, halo-trimmed cloud mask of a band cube."""

from __future__ import annotations

import dataclasses
import inspect
import math
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.array.overlap import ensure_minimum_chunksize

from ..data.inputs import (
    band_cube,
    check_regular_grid,
    pixel_size,
    spatial_dims,
    to_reflectance,
)
from ..data.load import DEFAULT_CHUNK, PROCESSING_LEVEL_ATTR, SOURCE_ITEMS_ATTR
from ..errors import ProcessingLevelError, ProcessingLevelWarning
from ..models.fetch import fetch_weights
from ..models.protocol import ModelInfo
from ..models.published import default_for
from ..models.registry import ModelEntry, get, list_models, weights_origin
from . import tile_once
from .attributes import MASK_VARIABLE, PROBABILITY_VARIABLE, mask_attrs, probability_attrs
from .blocks import BlockTask, predict_block
from .cache import ModelSpec
from .checks import take_counts
from .device import resolve_device
from .geometry import ChunkGrid
from .model_grid import predict_at_model_resolution, read_at_model_resolution_applies
from .tiling import BLENDS, TileLattice

__all__ = ["DEFAULT_CHUNK", "predict"]

_BOUNDARIES = ("reflect", "nearest", "periodic", "none")
_OUTPUTS = ("class", "proba")


def _with_bands(entry: ModelEntry, bands: tuple[str, ...]) -> ModelInfo:
    """The entry's info with ``bands``; ``TypeError`` if its model takes a fixed layout."""
    if "bands" not in inspect.signature(entry.loader).parameters:
        raise TypeError(f"model {entry.name!r} takes a fixed set of bands "
                        f"({', '.join(entry.info.bands)}); do not pass bands=")
    if not bands or not all(isinstance(b, str) for b in bands):
        raise ValueError(f"bands= must list band names (e.g. ['B02', 'B03', 'B04']), got {bands!r}")
    return dataclasses.replace(entry.info, bands=bands)


def _check_level(data: xr.Dataset | xr.DataArray, entry: ModelEntry, *, strict: bool) -> None:
    """Warn (raise with ``strict``) when the items the data came from are of another
    processing level than the model's: an L2A model on L1C data calls clear land cloud."""
    level = data.attrs.get(PROCESSING_LEVEL_ATTR)
    levels = {level} if isinstance(level, str) else set(level or ())
    wrong = sorted(levels - {entry.info.level})
    if not wrong:
        return
    others = [name for name in list_models()
              if get(name).info.level in wrong and set(get(name).info.bands)
              == set(entry.info.bands)] or [name for name in list_models()
                                           if get(name).info.level in wrong][:4]
    message = (f"the data are {' and '.join(wrong)} (from the STAC items' "
               f"{PROCESSING_LEVEL_ATTR}) but model {entry.name!r} was trained on "
               f"{entry.info.level}; its masks would be wrong (an L2A model on L1C data calls "
               f"clear land cloud). Use a {'/'.join(wrong)} model: {', '.join(others)}")
    if strict:
        raise ProcessingLevelError(message)
    warnings.warn(message + " (strict=True makes this an error)", ProcessingLevelWarning,
                  stacklevel=3)


def _check_default_weights(entry: ModelEntry, runtime: str) -> None:
    """Before any task runs: fetch the model's published weights into this process's cache
    (each worker finds them there, or fetches them into its own), or raise the loader's error
    naming the fix when nothing is published or the fetch fails."""
    if default_for(entry.name) is None:
        entry.loader(weights=None, device="cpu", runtime=runtime)  # raises, naming the fix
    else:
        fetch_weights(entry.name)


def _as_dask(array: xr.DataArray, chunk: int) -> da.Array:
    data = array.data
    if isinstance(data, da.Array):
        return data
    chunks = (1,) * (array.ndim - 3) + (-1, chunk, chunk)
    return da.from_array(np.asarray(data), chunks=chunks)


def _rechunk(array: da.Array, smallest: int) -> da.Array:
    """Time in chunks of 1, all bands in one chunk, spatial chunks of ``smallest`` or more (or
    one chunk, along an axis shorter than that)."""
    ychunks, xchunks = (ensure_minimum_chunksize(min(smallest, sum(c)), c)
                        for c in array.chunks[-2:])
    return array.rechunk((1, -1, ychunks, xchunks))


def _with_halo(chunks: tuple[int, ...], depth: int, boundary: str) -> tuple[int, ...]:
    if boundary != "none":
        return tuple(c + 2 * depth for c in chunks)
    if len(chunks) == 1:
        return chunks
    inner = tuple(c + 2 * depth for c in chunks[1:-1])
    return (chunks[0] + depth, *inner, chunks[-1] + depth)


def _map_chunks(array: da.Array, task: BlockTask, boundary: str) -> da.Array:
    """The lazy output: (time, class, y, x) probabilities or (time, y, x) classes."""
    if task.shared:
        return tile_once.map_tile_once(array, task, boundary)
    dtype = np.float32 if task.output == "proba" else np.uint8
    ychunks, xchunks = array.chunks[-2:]
    halo = task.grid.halo
    out_chunks = (
        array.chunks[0],
        (task.n_out,),
        _with_halo(ychunks, halo[0], boundary),
        _with_halo(xchunks, halo[1], boundary),
    )
    result = da.map_overlap(
        predict_block,
        array,
        depth={0: 0, 1: 0, 2: halo[0], 3: halo[1]},
        boundary={0: "none", 1: "none", 2: boundary, 3: boundary},
        trim=True,
        allow_rechunk=False,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0, 0, 0, 0), dtype),
        task=task,
        token=f"xcloud-{task.spec.name}-{task.output}",
    )
    return result[:, 0] if task.output == "class" else result


def _wrap(result: da.Array, cube: xr.DataArray, info: ModelInfo, output: str,
          had_time: bool) -> xr.DataArray:
    ydim, xdim = spatial_dims(cube)
    leading = [d for d in cube.dims if d not in ("band", ydim, xdim)] or ["time"]
    coords = {k: v for k, v in cube.coords.items() if "band" not in v.dims}
    if output == "proba":
        dims = [*leading, "class", ydim, xdim]
        coords["class"] = list(info.scheme.names)
        array = xr.DataArray(result, dims=dims, coords=coords, name=PROBABILITY_VARIABLE)
        array.attrs.update(probability_attrs(info))
    else:
        array = xr.DataArray(result, dims=[*leading, ydim, xdim], coords=coords,
                             name=MASK_VARIABLE)
        array.attrs.update(mask_attrs(info))
    if "spatial_ref" in cube.coords:
        array.attrs["grid_mapping"] = "spatial_ref"
    return array if had_time else array.isel({leading[0]: 0}, drop=True)


def predict(
    data: xr.Dataset | xr.DataArray,
    *,
    model: str = "ukis-6b-l1c",
    weights: str | Path | None = None,
    output: str = "class",
    device: str = "auto",
    runtime: str = "auto",
    precision: str = "float32",
    batch_size: int = 4,
    halo: int | None = None,
    boundary: str = "reflect",
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    tile_anchor: int | None = None,
    tile_blend: str | None = None,
    nodata: float | None = None,
    invalid: str = "nodata",
    resolution: float | None = None,
    read_resolution: str | float | None = None,
    scale: float | None = None,
    offset: float | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    bands: Sequence[str] | None = None,
    strict: bool = False,
) -> xr.DataArray:
    """Cloud mask (uint8 classes) or class probabilities (float32) of Sentinel-2 bands.

    Parameters
    ----------
    data
        Dataset with one variable per band (odc-stac layout) or DataArray with a ``band``
        dimension; dims ``(y, x)`` or ``(time, y, x)``. Reflectance as floats, or integer
        digital numbers together with ``scale``/``offset``.
    model
        Registry name, see :func:`xcloud.models.list`.
    weights
        Local weights file replacing the model's default.
    output
        ``"class"`` for the mask, ``"proba"`` for per-class probabilities (class, y, x).
    device, runtime
        ``"auto"`` uses CUDA when present; runtime ``"torch"`` or ``"onnxruntime"`` where the
        model offers both.
    precision
        Arithmetic of the network's forward: ``"float32"`` (default, every model),
        ``"bfloat16"`` (torch models: KappaMask, CloudSEN12, SEnSeI-v2, DL-L8S2-UV; CPU or
        CUDA) or ``"float16"`` (torch models on CUDA only), run under :func:`torch.autocast`;
        the probabilities are float32 either way. The ukis and s2cloudless models run in
        float32 only (see :data:`xcloud.models.registry.PRECISIONS`).
    batch_size
        Tiles per model call.
    halo, boundary
        Context in input pixels that each chunk borrows from its neighbours (default: the
        model's halo) and how the image edge is padded (``reflect``, ``nearest``,
        ``periodic`` or ``none``).
    tile_size, tile_overlap
        Override the model's tile size and the overlap of tiles inside a chunk (model pixels).
    tile_anchor, tile_blend
        Override where the scene-wide tile lattice starts (model pixels from the scene's first
        row and column, usually negative) and how overlapping tiles are blended (``"ramp"`` or
        ``"mean"``, see :data:`xcloud.engine.tiling.BLENDS`). With ``tile_blend="mean"`` and the
        lattice of an authors' sliding window, the engine computes what that window computes
        (see the model pages).
    nodata
        Value that marks missing data when all bands have it (in the input's units).
    invalid
        Pixels that cannot be valid (NaN or infinity in some bands but not all, values outside
        the physical range of reflectance, see :mod:`xcloud.engine.checks`): ``"nodata"``
        (default) marks them no data, with an :class:`~xcloud.errors.InvalidPixelsWarning`
        and, for a computed result, their count in the ``xcloud:invalid_pixels`` attribute;
        ``"raise"`` refuses them. Input that cannot be reflectance at all (a band of digital
        numbers, an offset applied twice, a chunk far too dark) always raises.
    resolution
        Input pixel size in metres when the coordinates do not tell it.
    read_resolution
        Where ``data`` is what :func:`xcloud.load` made (or a selection of it) and the model
        works on a coarser grid: ``"model"`` reads the bands again on the model's grid, from
        the coarsest COG overview or JPEG 2000 resolution level that serves it, and brings
        the mask back to ``data``'s grid; ``"data"`` reads at the data's resolution and
        averages down in each chunk; a number is a model grid of that pixel size in metres
        (s2cloudless: ``160``). None: the model's default
        (:data:`xcloud.engine.model_grid.DEFAULT_READ_RESOLUTION`: ``"model"`` only where
        the masks agreed with the full-resolution path on >= 99.5 % of the real scene's
        pixels). See :mod:`xcloud.engine.model_grid`.
    scale, offset
        Convert integer digital numbers to reflectance: ``dn * scale + offset``.
    chunk_size
        Spatial chunk size used when the input is not already a Dask array.
    bands
        For models that take any set of bands (SEnSeI-v2): the bands to give the model, in
        channel order (default: the model's own list). Models with a fixed layout refuse it.
    strict
        Raise :class:`~xcloud.errors.ProcessingLevelError` when the data's processing level
        (``xcloud:processing_level``, set by :func:`xcloud.load` from the items) is not the
        model's (by default a :class:`~xcloud.errors.ProcessingLevelWarning`), and
        :class:`~xcloud.errors.ModelOutputError` where the model's output is not finite
        for more than 1 % of a chunk's valid pixels; by default such pixels are no data (never
        a class), reported with a warning and, for a computed result, counted in the
        ``xcloud:nonfinite_pixels`` attribute.

    Returns
    -------
    xarray.DataArray
        Lazy if the input is Dask-backed, computed otherwise; coordinates, ``spatial_ref`` and
        CF flag attributes included. Pixels with no data get the scheme's no-data class.
    """
    _check_choices(output=output, boundary=boundary, tile_blend=tile_blend, invalid=invalid)
    resolved_device = resolve_device(device)
    get(model).check_precision(precision, device=resolved_device)
    if read_at_model_resolution_applies(data, model=model, read_resolution=read_resolution,
                                        bands=bands, resolution=resolution, scale=scale,
                                        offset=offset, nodata=nodata):
        return predict_at_model_resolution(  # it applies to Datasets only
            cast(xr.Dataset, data), model=model, read_resolution=read_resolution,
            weights=weights, output=output, device=device, runtime=runtime,
            precision=precision, batch_size=batch_size, halo=halo,
            boundary=boundary, tile_size=tile_size, tile_overlap=tile_overlap,
            tile_anchor=tile_anchor, tile_blend=tile_blend, invalid=invalid, bands=bands,
            strict=strict)
    entry = get(model)
    chosen = None if bands is None else tuple(bands)
    info = _model_info(data, entry, weights=weights, runtime=runtime, bands=chosen,
                       strict=strict)
    cube, lazy = _reflectance_cube(data, info, scale=scale, offset=offset)
    zoom = (resolution or pixel_size(cube, default=info.resolution)) / info.resolution
    tiles = _lattice(info, size=tile_size, overlap=tile_overlap, anchor=tile_anchor,
                     blend=tile_blend)
    had_time = cube.ndim == 4
    if not had_time:
        cube = cube.expand_dims("time")
    array, grid, shared = _plan_chunks(cube, info, zoom, tiles=tiles, halo=halo,
                                       boundary=boundary, chunk_size=chunk_size)
    task = BlockTask(
        spec=ModelSpec.create(model, weights=weights, device=resolved_device,
                              runtime=runtime, bands=chosen, precision=precision),
        info=info, grid=grid, tiles=tiles, output=output, batch_size=batch_size,
        nodata=_nodata_reflectance(nodata, scale=scale, offset=offset), invalid=invalid,
        shared=shared, strict=strict, token=uuid.uuid4().hex,
    )
    result = _wrap(_map_chunks(array, task, boundary), cube, info, output, had_time)
    _add_provenance(result, data, entry, weights=weights, invalid=invalid)
    return result if lazy else _computed(result, task.token)


# The steps of predict: check the arguments, the model and the data, plan the chunks


def _check_choices(*, output: str, boundary: str, tile_blend: str | None, invalid: str) -> None:
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    if boundary not in _BOUNDARIES:
        raise ValueError(f"boundary must be one of {_BOUNDARIES}, got {boundary!r}")
    if tile_blend is not None and tile_blend not in BLENDS:
        raise ValueError(f"tile_blend must be one of {BLENDS}, got {tile_blend!r}")
    if invalid not in ("raise", "nodata"):
        raise ValueError(f"invalid must be 'raise' or 'nodata', got {invalid!r}")


def _model_info(data: xr.Dataset | xr.DataArray, entry: ModelEntry, *,
                weights: str | Path | None, runtime: str, bands: tuple[str, ...] | None,
                strict: bool) -> ModelInfo:
    """The model's info (with ``bands``), once the data's processing level and the model's
    published weights are checked."""
    _check_level(data, entry, strict=strict)
    if entry.info.needs_weights_file and weights is None:
        _check_default_weights(entry, runtime)
    return entry.info if bands is None else _with_bands(entry, bands)


def _reflectance_cube(data: xr.Dataset | xr.DataArray, info: ModelInfo, *,
                      scale: float | None, offset: float | None) -> tuple[xr.DataArray, bool]:
    """The model's bands as a reflectance cube on a regular grid, and whether the data are
    lazy (Dask-backed)."""
    cube = band_cube(data, info.bands)
    lazy = isinstance(cube.data, da.Array)
    cube = to_reflectance(cube, scale=scale, offset=offset)
    check_regular_grid(cube)
    return cube, lazy


def _nodata_reflectance(nodata: float | None, *, scale: float | None,
                        offset: float | None) -> float | None:
    """The no-data value in reflectance (it is given in the input's units)."""
    if nodata is None or (scale is None and offset is None):
        return nodata
    return float(np.float32(nodata) * (1.0 if scale is None else scale)
                 + (0.0 if offset is None else offset))


def _lattice(info: ModelInfo, *, size: int | None, overlap: int | None, anchor: int | None,
             blend: str | None) -> TileLattice | None:
    """The model's tile lattice with the caller's overrides; ``None`` for pixel models."""
    size = info.tile_size if size is None else size
    if size is None:
        return None
    return TileLattice(size, info.tile_overlap if overlap is None else overlap,
                       info.tile_anchor if anchor is None else anchor,
                       info.tile_blend if blend is None else blend)


def _plan_chunks(cube: xr.DataArray, info: ModelInfo, zoom: float, *,
                 tiles: TileLattice | None, halo: int | None, boundary: str,
                 chunk_size: int) -> tuple[da.Array, ChunkGrid, bool]:
    """The (time, band, y, x) cube as a Dask array in chunks of at least the halo, their grid,
    and whether the chunks share their tiles (:mod:`xcloud.engine.tile_once`)."""
    default = math.ceil(info.context / zoom)  # the halo that makes chunking exact
    depth = default if halo is None else _checked_halo(halo)
    # along an axis shorter than the halo (one chunk) a wider halo would only add mirrored
    # pixels, which tiling adds anyway
    depths = (min(depth, cube.shape[-2]), min(depth, cube.shape[-1]))
    pads = depths if boundary != "none" else (0, 0)
    shared = tile_once.supports(
        None if tiles is None else tiles.size, zoom, depth, default,
        padded=[(-pad, length + pad) for pad, length in zip(pads, cube.shape[-2:], strict=True)])
    smallest = depth
    if shared:
        assert tiles is not None  # tile_once.supports() is False without tiles
        smallest = max(depth, tile_once.min_chunk(tiles.size, zoom))
    array = _rechunk(_as_dask(cube, chunk_size), smallest)
    grid = ChunkGrid.from_chunks(array.chunks[-2:], halo=depths,
                                 halo_at_edges=boundary != "none", zoom=zoom)
    return array, grid, shared


def _checked_halo(halo: int) -> int:
    if halo < 0:
        raise ValueError(f"halo must be >= 0 input pixels, got {halo}")
    return int(halo)


# The result: attributes, computed unless the data are lazy


def _add_provenance(result: xr.DataArray, data: xr.Dataset | xr.DataArray, entry: ModelEntry,
                    *, weights: str | Path | None, invalid: str) -> None:
    if SOURCE_ITEMS_ATTR in data.attrs:
        result.attrs[SOURCE_ITEMS_ATTR] = list(data.attrs[SOURCE_ITEMS_ATTR])
    result.attrs["xcloud:invalid"] = invalid
    if weights is not None:  # the user's file or a copy of the published one: say which
        result.attrs.update(weights_origin(entry, weights))


def _computed(result: xr.DataArray, token: str) -> xr.DataArray:
    """The result computed, with the pixels its chunks marked no data counted."""
    with dask.config.set(scheduler="threads"):
        computed = result.compute()
    counts = take_counts(token)
    computed.attrs["xcloud:invalid_pixels"] = counts.get("invalid_input", 0)
    computed.attrs["xcloud:nonfinite_pixels"] = counts.get("nonfinite_output", 0)
    return computed
