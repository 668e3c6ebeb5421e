"""Turn user input (odc-stac Dataset or a DataArray with a band dim) into a band cube."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import BandError, GridError, InputDtypeError, XcloudWarning
from .bands import match_bands

__all__ = ["band_cube", "check_regular_grid", "pixel_size", "spatial_dims", "to_reflectance"]

_SPATIAL_PAIRS = (("y", "x"), ("latitude", "longitude"), ("lat", "lon"), ("rows", "cols"))


def spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[Hashable, Hashable]:
    """The (row, column) dimension names: ``y``/``x`` or another known pair, else the last two."""
    dims = tuple(obj.dims)
    for pair in _SPATIAL_PAIRS:
        if all(d in dims for d in pair):
            return pair
    if isinstance(obj, xr.Dataset):
        first = next(iter(obj.data_vars.values()))
        return spatial_dims(first)
    if len(dims) < 2:
        raise BandError(f"input has dims {dims}; it needs two spatial dimensions (y, x)")
    return dims[-2], dims[-1]


def _band_labels(array: xr.DataArray) -> list[str]:
    labels = [str(v) for v in np.atleast_1d(array["band"].values)] if "band" in array.coords else []
    long_name = array.attrs.get("long_name")
    numeric = not labels or all(label.isdigit() for label in labels)
    if numeric and isinstance(long_name, list | tuple) and len(long_name) == array.sizes["band"]:
        labels = [str(v) for v in long_name]  # rioxarray keeps band names in long_name
    if not labels:
        raise BandError("the 'band' dimension has no labels; assign band names, e.g. "
                        "da.assign_coords(band=['B02', 'B03', ...])")
    return labels


def _grid(variable: xr.DataArray) -> tuple[tuple[Hashable, int], ...]:
    """The (dimension, size) pairs of a variable's rows and columns."""
    return tuple((dim, variable.sizes[dim]) for dim in spatial_dims(variable))


def _check_one_grid(data: xr.Dataset, names: Sequence[str]) -> None:
    """Raise :class:`GridError` unless the variables ``names`` share rows and columns.

    Variables of one Dataset that share dimension names share their coordinates, so bands on
    other grids (20 m and 60 m bands read at their native resolution) show up as other
    dimensions or sizes.
    """
    grids = {name: _grid(data[name]) for name in names}
    reference = grids[names[0]]
    others = [name for name in names if grids[name] != reference]
    if others:
        shown = "; ".join(f"{name} {dict(grids[name])}" for name in [names[0], *others])
        raise GridError(
            f"the bands are not on one pixel grid ({shown}); bring them to one grid first: "
            "xcloud.load(items, resolution=10) does it, or resample the others with "
            "rioxarray's .rio.reproject_match() or xarray's .interp_like()"
        )


def _check_one_dtype(data: xr.Dataset, names: Sequence[str]) -> None:
    """Refuse integer bands beside floating-point ones: one band of digital numbers among
    bands of reflectance would pass a check of the combined dtype."""
    integers = [n for n in names if np.issubdtype(data[n].dtype, np.integer)]
    if integers and len(integers) < len(names):
        raise InputDtypeError(
            f"bands {', '.join(integers)} are integers ({data[integers[0]].dtype}) while the "
            "others are floating point: probably digital numbers beside reflectance; convert "
            "them (reflectance = DN * 0.0001, - 0.1 from processing baseline 04.00) or load "
            "all bands with xcloud.load()")


def _stack_blocks(*blocks: np.ndarray) -> np.ndarray:
    return np.stack(blocks, axis=-3)  # of dtype np.result_type(*blocks)


def _stacked(variables: list[xr.DataArray], ydim: Hashable, xdim: Hashable) -> xr.DataArray:
    """The variables stacked along a new ``band`` dimension before ``(ydim, xdim)``.

    Dask-backed variables with the same dimensions and chunks are stacked by one task per
    chunk (fused with the tasks that make the bands), where ``xr.concat`` adds two tasks per
    band and chunk and a rechunk to put the bands in one chunk.
    """
    first = variables[0]
    same = all(v.dims == first.dims and isinstance(v.data, da.Array)
               and v.data.chunks == first.data.chunks for v in variables)
    if not same or first.dims[-2:] != (ydim, xdim):
        return xr.concat(variables, dim="band", coords="minimal", compat="override",
                         join="exact")
    dtype = np.result_type(*(v.dtype for v in variables))
    index = tuple(f"d{axis}" for axis in range(first.ndim))
    out = (*index[:-2], "band", *index[-2:])
    data = da.blockwise(_stack_blocks, out,
                        *(item for v in variables for item in (v.data, index)),
                        new_axes={"band": len(variables)}, dtype=dtype,
                        meta=np.empty((0,) * (first.ndim + 1), dtype))
    return xr.DataArray(data, dims=(*first.dims[:-2], "band", ydim, xdim), coords=first.coords,
                        attrs=first.attrs)


def band_cube(data: xr.Dataset | xr.DataArray, bands: Sequence[str]) -> xr.DataArray:
    """Select ``bands`` (canonical names) from ``data``, in that order, as (..., band, y, x)."""
    if isinstance(data, xr.Dataset):
        names = match_bands(data.data_vars, bands)
        _check_one_grid(data, names)
        _check_one_dtype(data, names)
        ydim, xdim = spatial_dims(data[names[0]])
        cube = _stacked([data[n] for n in names], ydim, xdim)
    elif isinstance(data, xr.DataArray):
        if "band" not in data.dims:
            raise BandError(
                f"a DataArray input needs a 'band' dimension, got dims {data.dims}; "
                "or pass a Dataset with one variable per band"
            )
        ydim, xdim = spatial_dims(data)
        labels = _band_labels(data)
        names = match_bands(labels, bands)
        cube = data.isel(band=[labels.index(n) for n in names])
    else:
        raise TypeError(f"expected an xarray Dataset or DataArray, got {type(data).__name__}")
    cube = cube.assign_coords(band=list(bands))
    others = [d for d in cube.dims if d not in ("band", ydim, xdim)]
    if len(others) > 1:
        raise BandError(
            f"input has extra dimensions {others}; xcloud takes (y, x) or one more dimension "
            "such as time: select or stack the others first"
        )
    return cube.transpose(*others, "band", ydim, xdim)


def to_reflectance(cube: xr.DataArray, *, scale: float | None,
                   offset: float | None) -> xr.DataArray:
    """Reflectance as float32; integer digital numbers need an explicit ``scale``/``offset``."""
    if scale is not None or offset is not None:
        scaled = cube.astype(np.float32) * (1.0 if scale is None else scale)
        return scaled + (0.0 if offset is None else offset)
    if np.issubdtype(cube.dtype, np.integer):
        raise InputDtypeError(
            f"the bands are integers ({cube.dtype}), not reflectance. Sentinel-2 digital numbers "
            "are reflectance x 10000, with an offset of -1000 DN from processing baseline 04.00: "
            "pass scale=0.0001 (and offset=-0.1 for baseline >= 04.00), or load with "
            "xcloud.load() which does this from the STAC metadata"
        )
    if not np.issubdtype(cube.dtype, np.floating):
        raise InputDtypeError(f"bands of dtype {cube.dtype} cannot be used as reflectance")
    return cube.astype(np.float32, copy=False)


_GRID_RTOL = 1e-4  # coordinates from float arithmetic (linspace, bbox / shape) jitter less
_SQUARE_RTOL = 0.01  # a bbox divided by the pixel count gives steps a little apart (0.03 %)


def _steps(coord: np.ndarray, name: Hashable) -> float | None:
    """The step of an evenly spaced coordinate (``None`` for fewer than two values);
    :class:`GridError` if it is not evenly spaced."""
    if coord.size < 2 or not np.issubdtype(coord.dtype, np.number):
        return None
    steps = np.diff(coord.astype(np.float64))
    step = float(steps[0])
    if step == 0 or not np.allclose(steps, step, rtol=_GRID_RTOL, atol=0):
        raise GridError(
            f"the {name} coordinates are not evenly spaced (steps from {steps.min():g} to "
            f"{steps.max():g}): xcloud needs a regular grid; resample the data onto one first "
            "(e.g. .rio.reproject() or xcloud.load(..., resolution=10))")
    return step


def check_regular_grid(cube: xr.DataArray) -> None:
    """Raise :class:`GridError` unless the x and y coordinates (where present) are evenly
    spaced with square pixels (the same step on both axes)."""
    ydim, xdim = spatial_dims(cube)
    steps = {dim: _steps(np.asarray(cube[dim].values), dim)
             for dim in (xdim, ydim) if dim in cube.coords}
    known = {dim: abs(step) for dim, step in steps.items() if step is not None}
    if len(known) == 2 and not np.isclose(known[xdim], known[ydim], rtol=_SQUARE_RTOL):
        raise GridError(
            f"the pixels are not square: {xdim} steps {known[xdim]:g}, {ydim} steps "
            f"{known[ydim]:g}; bring the bands to one square grid first (e.g. "
            ".rio.reproject(resolution=...) or xcloud.load(..., resolution=10))")


def pixel_size(cube: xr.DataArray, *, default: float) -> float:
    """Ground pixel size (m) from the x coordinate; ``default`` (with a warning) if unknown."""
    _, xdim = spatial_dims(cube)
    crs = _crs(cube)
    if xdim in cube.coords and cube.sizes[xdim] > 1 and (crs is None or crs.is_projected):
        values = cube[xdim].values
        step = float(abs(values[1] - values[0]))
        if crs is not None or step > 1.0:  # without a CRS, 1 may be a pixel index
            return step
    warnings.warn(
        f"cannot tell the pixel size from the input's coordinates; assuming the model's "
        f"resolution of {default:g} m. Pass resolution= to say what it is.",
        XcloudWarning,
        stacklevel=4,
    )
    return default


def _crs(cube: xr.DataArray):
    try:
        import rioxarray  # noqa: F401

        return cube.rio.crs
    except Exception:
        return None
