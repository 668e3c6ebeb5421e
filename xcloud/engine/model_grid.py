"""``predict`` at the model's resolution: read the bands on the model's grid, mask there, and
bring the mask back to the grid the user asked for.

Where the data are what :func:`xcloud.load` made from STAC items (or a selection of it, see
:func:`xcloud.data.load.recipe_of`) and the model works on a grid coarser by an integer factor
(ukis-csmask at 30 m on 10 m data: 3), the bands are read again on the model's grid, each from
the coarsest overview or JPEG 2000 resolution level of its files that serves it
(:func:`xcloud.data.levels.read_coarser`; a file without levels is read at full resolution
and averaged down). :func:`xcloud.predict` runs on that cube (``output="proba"``, no
resampling inside), the probabilities are brought to the user's grid with xcloud's bilinear
kernel (:func:`xcloud.data.resample.resample_dask`, the same across chunks as on the whole
array; weights renormalised over the model pixels that have data), and classified as
``predict`` classifies (the model's ``classify``; no data where the model's grid has none).
The mask has the dimensions, coordinates, CRS, name and attributes ``predict`` gives on the
user's grid.

When it is used: ``read_resolution="model"`` asks for it, ``"data"`` for the
full-resolution path, a number (metres) for a model grid of that pixel size (s2cloudless,
registered at 10 m, is documented at 160 m: ``read_resolution=160``). The default per model
(:data:`DEFAULT_READ_RESOLUTION`) is ``"model"`` only where the masks agreed with the
full-resolution path on >= 99.5 % of the pixels of the real scene (measured in
``tests/test_model_grid.py`` and ``benchmarks/bench_read_levels.py``, see "Reading at the
model's resolution" in ``docs/concepts.md``); other models keep ``"data"``. The default
applies only where it can (data from :func:`xcloud.load`, an integer factor > 1, no
``scale``/``offset``/``nodata``/``resolution`` given); an explicit ``"model"`` or number that
cannot apply is an error naming the reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..data.bands import match_bands
from ..data.inputs import spatial_dims
from ..data.levels import read_coarser
from ..data.load import recipe_of
from ..models.protocol import ModelInfo, classifies_by_argmax
from ..models.registry import get
from .attributes import MASK_VARIABLE, mask_attrs, probability_attrs
from .blocks import classes_of, scheme_classes
from .cache import ModelSpec, get_model
from .device import resolve_device

__all__ = ["AGREEMENT_THRESHOLD", "DEFAULT_READ_RESOLUTION", "FINE_CLASSES_LAYER",
           "MEASURED_AGREEMENT",
           "READ_RESOLUTIONS", "model_grid_factor", "predict_at_model_resolution",
           "read_at_model_resolution_applies"]

READ_RESOLUTIONS = ("model", "data")
"""The named values of ``read_resolution`` (a number in metres is the third kind)."""

AGREEMENT_THRESHOLD = 0.995
"""A model reads at its own resolution by default only where its masks agreed with the
full-resolution path on at least this fraction of the real scene's pixels."""

MEASURED_AGREEMENT: Mapping[str, Mapping[str, float]] = {
    "ukis-6b-l1c": {"no levels": 1.0000, "jpeg2000 levels": 0.9962, "cog overviews": 1.0000},
    "ukis-4b-l1c": {"no levels": 1.0000, "jpeg2000 levels": 0.9918, "cog overviews": 1.0000},
    "ukis-6b-l2a": {"no levels": 1.0000, "jpeg2000 levels": 0.9925, "cog overviews": 1.0000},
    "ukis-4b-l2a": {"no levels": 1.0000, "jpeg2000 levels": 0.9914, "cog overviews": 1.0000},
    "dl-l8s2-uv-rgbi": {"no levels": 1.0000, "jpeg2000 levels": 0.9937,
                        "cog overviews": 1.0000},
    "dl-l8s2-uv-rgbiswir": {"no levels": 1.0000, "jpeg2000 levels": 0.9984,
                            "cog overviews": 1.0000},
}
"""Fraction of pixels where the mask read at the model's resolution (30 m for these models)
equals :func:`xcloud.predict`'s full-resolution mask, on the real L1C scene (T33UUU) as it is
(``no levels``: JPEG 2000 without resolution levels, 768 x 1536 px) and mirrored to 3072² px
and encoded as Sentinel-2 L1C products are (``jpeg2000 levels``: 1024² px tiles, 5
resolution levels, lossless) and as Earth Search serves Level-2A (``cog overviews``: COGs with
AVERAGE overviews, which at 30 m do not serve: read at full resolution). Measured 2026-12-07
with ``benchmarks/bench_read_levels.py``'s encodings; ``tests/test_model_grid.py`` checks the
first column. Models at 10 m have nothing to read coarser."""

DEFAULT_READ_RESOLUTION: Mapping[str, str] = {
    name: "model" for name, measured in MEASURED_AGREEMENT.items()
    if min(measured.values()) >= AGREEMENT_THRESHOLD
}
"""Models that read at their own resolution by default; every other model reads at the
data's (``"data"``)."""

FINE_CLASSES_LAYER = "model-grid-classes"
"""The graph layer (name prefix) that classes the model grid's probabilities on the data's
grid."""

_PASSED_ON = ("weights", "device", "runtime", "precision", "batch_size", "boundary", "tile_size",
              "tile_overlap", "tile_anchor", "tile_blend", "invalid", "bands", "strict")
_NOT_WITH = ("resolution", "scale", "offset", "nodata")  # only for data load did not make


def _target_resolution(read_resolution: str | float | None, model: str,
                       info: ModelInfo) -> tuple[float | None, bool]:
    """The model grid's pixel size (None: the data's) and whether the caller asked for it."""
    explicit = read_resolution is not None
    if read_resolution is None:
        read_resolution = DEFAULT_READ_RESOLUTION.get(model, "data")
    if isinstance(read_resolution, str):
        if read_resolution not in READ_RESOLUTIONS:
            raise ValueError(f"read_resolution must be one of {READ_RESOLUTIONS} or a pixel "
                             f"size in metres, got {read_resolution!r}")
        return (None if read_resolution == "data" else float(info.resolution)), explicit
    if isinstance(read_resolution, bool) or not float(read_resolution) > 0:
        raise ValueError(f"read_resolution must be 'model', 'data' or a pixel size in metres "
                         f"> 0, got {read_resolution!r}")
    return float(read_resolution), explicit


def _refuse(explicit: bool, reason: str, read_resolution: object) -> None:
    if explicit:
        raise ValueError(f"read_resolution={read_resolution!r} cannot apply: {reason}; pass "
                         "read_resolution='data' to mask at the data's resolution")


def model_grid_factor(data: xr.Dataset | xr.DataArray, *, model: str = "ukis-6b-l1c",
                      read_resolution: str | float | None = None,
                      **options: Any) -> int | None:
    """How many of ``data``'s pixels a model pixel spans along each axis when ``predict``
    reads at the model's resolution, or None when it reads at the data's.

    Parameters
    ----------
    data
        The data given to :func:`xcloud.predict`.
    model, read_resolution
        As for :func:`predict_at_model_resolution`.
    **options
        :func:`xcloud.predict`'s other keywords (``resolution``, ``scale``, ``offset`` and
        ``nodata`` rule the path out: they describe data :func:`xcloud.load` did not make).

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        ``read_resolution`` is not ``"model"``, ``"data"``, None or a size > 0, or was given
        explicitly and cannot apply (the reason is named).
    """
    info = get(model).info
    target, explicit = _target_resolution(read_resolution, model, info)
    if target is None:
        return None
    given = [name for name in _NOT_WITH if options.get(name) is not None]
    if given:
        _refuse(explicit, f"{', '.join(given)} given (the path reads what xcloud.load made)",
                read_resolution)
        return None
    bands = _band_names(data, options.get("bands"), info)
    if bands is None:
        _refuse(explicit, f"the data are not a Dataset holding model {model!r}'s bands",
                read_resolution)
        return None
    recipe = recipe_of(data, bands)
    if recipe is None:
        _refuse(explicit, "the data are not what xcloud.load made in this process (or were "
                "changed since: see xcloud.data.load.recipe_of)", read_resolution)
        return None
    ratio = target / abs(recipe.geobox.affine.a)
    factor = round(ratio)
    if factor < 1 or not math.isclose(ratio, factor, rel_tol=1e-6):
        _refuse(explicit, f"{target:g} m is not an integer multiple of the data's "
                f"{abs(recipe.geobox.affine.a):g} m pixels", read_resolution)
        return None
    return factor if factor > 1 else None


def read_at_model_resolution_applies(data: xr.Dataset | xr.DataArray, **options: Any) -> bool:
    """Whether :func:`xcloud.predict` with these keywords masks ``data`` through
    :func:`predict_at_model_resolution` (see :func:`model_grid_factor`)."""
    return model_grid_factor(data, **options) is not None


def _band_names(data: xr.Dataset | xr.DataArray, bands: Any,
                info: ModelInfo) -> list[str] | None:
    """The variables of ``data`` holding the model's bands; None when it has none such."""
    if not isinstance(data, xr.Dataset):
        return None
    try:
        return match_bands(data.data_vars, tuple(bands) if bands is not None else info.bands)
    except ValueError:  # BandError/MissingBandError: predict says which band is missing
        return None


def predict_at_model_resolution(data: xr.Dataset, *, model: str = "ukis-6b-l1c",
                                output: str = "class",
                                read_resolution: str | float | None = None,
                                read_levels: bool = True, halo: int | None = None,
                                **options: Any) -> xr.DataArray:
    """:func:`xcloud.predict` of data from :func:`xcloud.load`, reading on the model's grid.

    Parameters
    ----------
    data
        What :func:`xcloud.load` returned, or a selection of it.
    model, output, halo
        As for :func:`xcloud.predict` (``halo`` in the data's pixels, as there).
    read_resolution
        ``"model"``: the model's resolution; a number: that pixel size in metres (an integer
        multiple of the data's); None: :data:`DEFAULT_READ_RESOLUTION`, else ``"model"``
        here (this function is the model-grid path).
    read_levels
        Read from overviews and JPEG 2000 levels where they serve (default); ``False`` reads
        the bands at full resolution and averages them to the model's grid (to measure what
        the levels change).
    **options
        :func:`xcloud.predict`'s other keywords (``weights``, ``device``, ``batch_size``,
        ``invalid``, ``strict``...).

    Returns
    -------
    xarray.DataArray
        Lazy; what :func:`xcloud.predict` returns on ``data``'s grid (name, dimensions,
        coordinates, ``spatial_ref`` and attributes; ``model_resolution_m`` is the grid the
        model ran on).

    Raises
    ------
    ValueError
        The path cannot apply to ``data`` with these keywords (the reason is named), or
        ``read_resolution="data"``.
    """
    from .predict import predict  # predict calls this module (its read_resolution hook)

    if output not in ("class", "proba"):
        raise ValueError(f"output must be 'class' or 'proba', got {output!r}")
    if read_resolution is None:
        read_resolution = DEFAULT_READ_RESOLUTION.get(model, "model")
    factor = model_grid_factor(data, model=model, read_resolution=read_resolution, **options)
    if factor is None:
        raise ValueError(f"read_resolution={read_resolution!r} reads at the data's resolution "
                         f"(model {model!r}, pixel size of the data): call xcloud.predict")
    entry = get(model)
    bands = options.get("bands")
    info = entry.info if bands is None else dataclasses.replace(entry.info, bands=tuple(bands))
    names = _band_names(data, bands, info) or []
    coarse = read_coarser(data[names], factor, levels=read_levels)
    passed = {key: options[key] for key in _PASSED_ON if key in options}
    # resolution=: the model's own, so that it runs on the coarse pixels as they are (zoom 1)
    proba = predict(coarse, model=model, output="proba", resolution=info.resolution,
                    halo=None if halo is None else math.ceil(halo / factor), **passed)
    spec = ModelSpec.create(model, weights=options.get("weights"),
                            device=resolve_device(options.get("device", "auto")),
                            runtime=options.get("runtime", "auto"),
                            bands=None if bands is None else tuple(bands),
                            precision=options.get("precision", "float32"))
    if output == "class" and _context(info) == 0:
        values = _fine_classes(proba, factor, data[names[0]], spec)
    else:
        fine = _upsampled(proba, factor, data[names[0]])
        values = fine if output == "proba" else _classified(fine, spec, info)
    return _wrapped(values, data[names[0]], proba, info, output=output,
                    resolution=factor * abs(float(_pixel(data[names[0]]))))


def _pixel(variable: xr.DataArray) -> float:
    _, xdim = spatial_dims(variable)
    x = variable[xdim].values
    return float(x[1] - x[0]) if x.size > 1 else float("nan")


def _context(info: ModelInfo) -> int:
    """Model pixels of context a pixel model's ``classify`` looks at (s2cloudless dilates);
    0 for tile models."""
    return int(info.context) if info.tile_size is None else 0


def _weighted_stack(proba: xr.DataArray) -> da.Array:
    """(time, class + 1, y, x) float32: :func:`_weighted_block` of each block."""
    coarse = proba.data if proba.ndim == 4 else proba.data[None]
    coarse = coarse.rechunk({1: -1})
    return da.map_blocks(_weighted_block, coarse, dtype=np.float32,
                         chunks=(coarse.chunks[0], (coarse.shape[1] + 1,), *coarse.chunks[2:]),
                         meta=np.empty((0, 0, 0, 0), np.float32))


def _weighted_block(coarse: np.ndarray) -> np.ndarray:
    """(time, class + 1, y, x) float32 of (time, class, y, x) probabilities: the
    probabilities, 0 where the model's grid has no data, and a last channel 1.0 where it has
    data, 0.0 where not (the bilinear weights' share)."""
    valid = np.isfinite(coarse).all(axis=1, keepdims=True)
    return np.concatenate([np.where(valid, coarse, 0.0), valid], axis=1, dtype=np.float32)


def _fine_shape(like: xr.DataArray) -> tuple[int, int]:
    ydim, xdim = spatial_dims(like)
    return like.sizes[ydim], like.sizes[xdim]


def _upsampled(proba: xr.DataArray, factor: int, like: xr.DataArray) -> da.Array:
    """(time, class, y, x) probabilities on ``like``'s grid: bilinear, weights renormalised
    over the model pixels with data; NaN in the fine pixels of model pixels without data."""
    from ..data.resample import resample_dask  # numba loads when resampling is used

    stacked = _weighted_stack(proba)
    shape = _fine_shape(like)
    smooth = resample_dask(stacked, factor, method="bilinear", out_shape=shape)
    covered = resample_dask(stacked[:, -1:] > 0, factor, method="nearest", out_shape=shape)
    covered = covered.rechunk((*smooth.chunks[:1], (1,), *smooth.chunks[2:]))
    return da.map_blocks(_normalised, smooth, covered, dtype=np.float32,
                         chunks=(smooth.chunks[0], (stacked.shape[1] - 1,),
                                 *smooth.chunks[2:]))


def _fine_classes(proba: xr.DataArray, factor: int, like: xr.DataArray,
                  spec: ModelSpec) -> da.Array:
    """Classes (time, y, x) on ``like``'s grid of :func:`_upsampled`'s probabilities, as
    :func:`_classified` gives them, in one task per chunk that keeps no fine probabilities
    (for models that classify by argmax: :func:`_classes_block`)."""
    from ..data.resample import map_upsampled

    return map_upsampled(partial(_classes_block, spec=spec), _weighted_stack(proba), factor,
                         halo=1, dtype=np.uint8, out_shape=_fine_shape(like),
                         drops_channels=True, name=FINE_CLASSES_LAYER)


def _classes_block(stacked: np.ndarray, factor: int, *, spec: ModelSpec) -> np.ndarray:
    """One block of :func:`_fine_classes` from its weighted model-grid stack (with halo)."""
    from ..data.resample import upsample_bilinear, upsample_bilinear_argmax, upsample_nearest

    model = get_model(spec)
    if not classifies_by_argmax(model):
        smooth = upsample_bilinear(stacked, factor)
        covered = upsample_nearest(stacked[:, -1:] > 0, factor)
        return _classify_block(_normalised(smooth, covered), spec)
    return scheme_classes(upsample_bilinear_argmax(stacked, factor, weighted=True),
                          model.info.scheme)


def _normalised(smooth: np.ndarray, covered: np.ndarray) -> np.ndarray:
    weight = smooth[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        proba = smooth[:, :-1] / weight
    return np.where(covered.astype(bool) & (weight > 0), proba, np.nan).astype(np.float32)


def _classified(fine: da.Array, spec: ModelSpec, info: ModelInfo) -> da.Array:
    """Classes (time, y, x) as predict gives them: the model's ``classify`` (pixel models see
    their halo: s2cloudless dilates), the scheme's no-data value where probabilities are
    not finite."""
    from dask.array.overlap import overlap, trim_internal

    depth = _context(info)
    haloed = overlap(fine, depth={2: depth, 3: depth}, boundary="none") if depth else fine
    classes = da.map_blocks(_classify_block, haloed, spec, dtype=np.uint8, drop_axis=1,
                            meta=np.empty((0, 0, 0), np.uint8))
    return trim_internal(classes, {1: depth, 2: depth}, boundary="none") if depth else classes


def _classify_block(proba: np.ndarray, spec: ModelSpec) -> np.ndarray:
    scheme = get_model(spec).info.scheme
    out = np.empty((proba.shape[0], *proba.shape[2:]), np.uint8)
    for step, image in enumerate(proba):
        empty = ~np.isfinite(image).all(axis=0)
        out[step] = classes_of(image, spec=spec, scheme=scheme, nonfinite=empty, nodata=empty)
    return out


def _wrapped(values: da.Array, like: xr.DataArray, proba: xr.DataArray, info: ModelInfo, *,
             output: str, resolution: float) -> xr.DataArray:
    """``values`` with ``like``'s coordinates, in ``like``'s chunks, named and described as
    :func:`xcloud.predict` names and describes its result."""
    ydim, xdim = spatial_dims(like)
    had_time = "time" in like.dims
    chunks = dict(zip(like.dims, like.chunks or (), strict=False))
    coords: dict[Hashable, Any] = {k: v for k, v in like.coords.items()
                                   if had_time or k != "time"}
    if output == "proba":
        dims: list[Hashable] = ["time", "class", ydim, xdim]
        coords["class"] = proba["class"].values
        array = values.rechunk((1, -1, chunks.get(ydim, -1), chunks.get(xdim, -1)))
    else:
        dims = ["time", ydim, xdim]
        array = values.rechunk((1, chunks.get(ydim, -1), chunks.get(xdim, -1)))
    result = xr.DataArray(array, dims=dims, coords=coords, name=proba.name)
    result = result if had_time else result.isel(time=0, drop=True)
    attrs = dict(proba.attrs)
    if output == "class":
        attrs = {k: v for k, v in attrs.items() if k not in probability_attrs(info)}
        attrs = {**mask_attrs(info), **attrs}
        result.name = MASK_VARIABLE
    if not math.isclose(resolution, info.resolution):
        attrs["model_resolution_m"] = resolution
    result.attrs.update(attrs)
    return result
