"""Matplotlib quick-looks of masks with a legend, and the fraction of each class.

:func:`plot_mask` draws the image of :func:`~.quicklook.quicklook_rgba` (the mask's classes in
their ``flag_colors`` over true colour) or, without RGB bands, a map of the classes in their
colours, with a legend of every class in ``flag_meanings``; :func:`save_plot` writes it to a
file. :func:`class_fractions` gives the fraction of each class per time step, lazily for a
Dask-backed mask.

Matplotlib is optional: ``pip install 'xcloud[plot]'``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import xarray as xr

from .._optional import import_optional
from ..errors import DatasetError
from .quicklook import CLEAR_CLASSES, RGB_BANDS, quicklook_rgba, subsample_step

__all__ = ["class_fractions", "plot_mask", "save_plot"]

TimeSelector = int | str | dt.datetime | np.datetime64


def plot_mask(
    mask: xr.DataArray,
    data: xr.Dataset | None = None,
    *,
    ax: Any = None,
    time: TimeSelector = 0,
    max_size: int = 1024,
    alpha: float = 0.55,
    brightness: float = 0.3,
    legend: bool = True,
    title: str | None = None,
) -> Any:
    """Draw a mask over a true-colour image, with a legend of its classes.

    Parameters
    ----------
    mask
        A class mask from :func:`xcloud.predict` (``flag_values``, ``flag_meanings`` and
        ``flag_colors`` attributes), in memory or Dask-backed; only the time step drawn is
        computed.
    data
        Reflectances with ``B04``/``B03``/``B02`` (or ``red``/``green``/``blue``) for the
        true-colour background, e.g. the input of :func:`xcloud.predict`. Without them the
        classes are drawn as a map in their colours.
    ax
        Matplotlib Axes to draw on; default: a new figure.
    time
        Time step: an index, or a date/time label (the nearest step is taken). Ignored for a
        mask without ``time``.
    max_size
        Longest side of the image in pixels; larger masks are subsampled.
    alpha
        Opacity of the class colours over the true colour. There, clear classes (clear,
        land, water, snow) are not painted, so the true colour shows through (their legend
        patches are hollow), and no data is opaque. Without RGB bands every class is drawn
        in its colour, opaque (a class map).
    brightness
        Reflectance drawn as full white.
    legend
        Add a legend (outside the axes, on the right) with one patch per class.
    title
        Axes title; default: the model and the date of the time step; ``""`` for none.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import_optional("matplotlib", extra="plot")
    names, colors = _classes(mask)
    frame = _at_time(mask, time)
    hollow: Collection[str]
    if _has_rgb(data):
        background = _at_time(data, frame.coords.get("time"))
        image = quicklook_rgba(frame, background, max_size=max_size, alpha=alpha,
                               brightness=brightness)
        hollow = CLEAR_CLASSES
    else:
        image, hollow = _class_map(frame, colors, max_size), ()
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(layout="constrained")
    extent = _extent(frame)
    ax.imshow(image, extent=extent, interpolation="nearest")
    if extent is not None:  # a few map coordinates in full, not as offsets from 5.8e6
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.locator_params(nbins=4)
        _label_axes(ax, frame)
    ax.set_title(_title(frame) if title is None else title)
    if legend:
        ax.legend(handles=_patches(names, colors, hollow), loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, title="classes")
    return ax


def _label_axes(ax: Any, frame: xr.DataArray) -> None:
    """Axis labels that say which coordinates these are (the CRS and its unit)."""
    crs = None
    try:
        import rioxarray  # noqa: F401

        crs = frame.rio.crs
    except ImportError:  # pragma: no cover - rioxarray comes with the geo extra
        pass
    if crs is None:
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        return
    unit = crs.linear_units if crs.is_projected else "degrees"
    name = crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"
    ax.set_xlabel(f"x ({name}, {unit})")
    ax.set_ylabel(f"y ({name}, {unit})")


def save_plot(path: str | os.PathLike[str], mask: xr.DataArray,
              data: xr.Dataset | None = None, *, dpi: int = 150, **kwargs: Any) -> Path:
    """Draw :func:`plot_mask` on a new figure and write it to ``path`` (PNG, PDF, SVG, ... by
    suffix). ``kwargs`` go to :func:`plot_mask`. The figure is not registered with pyplot,
    so nothing is left open.

    Returns
    -------
    pathlib.Path
    """
    import_optional("matplotlib", extra="plot")
    from matplotlib.figure import Figure

    figure = Figure(layout="constrained")
    plot_mask(mask, data, ax=figure.add_subplot(), **kwargs)
    target = Path(path)
    figure.savefig(target, dpi=dpi, bbox_inches="tight")
    return target


def class_fractions(mask: xr.DataArray, *, by_time: bool = True) -> xr.DataArray:
    """Fraction of the valid pixels in each class, per time step (lazy for Dask masks).

    Parameters
    ----------
    mask
        A class mask from :func:`xcloud.predict` (``flag_values``/``flag_meanings``
        attributes; ``nodata`` names the no-data value).
    by_time
        One row per time step; ``False`` pools all time steps.

    Returns
    -------
    xarray.DataArray
        Dims ``(time, class)`` (``(class,)`` without ``time`` or with ``by_time=False``);
        ``class`` holds the class names, with their mask values in the ``value`` coordinate.
        No-data pixels are left out of the denominator, so over a mask of known values the
        fractions of a time step sum to 1 (NaN where a step has no valid pixel); the
        ``no_data`` coordinate is the fraction of *all* pixels that have no data. Dask-backed
        when the mask is: nothing is computed until ``.compute()``.
    """
    names, _ = _classes(mask)
    values = np.array([int(v) for v in np.atleast_1d(mask.attrs["flag_values"])])
    nodata = mask.attrs.get("nodata")
    is_nodata = values == (int(nodata) if nodata is not None else -1)
    dims = [d for d in mask.dims if not (by_time and d == "time")]
    counts = xr.concat([(mask == v).sum(dims) for v in values], dim="class")
    counts = counts.assign_coords({"class": names, "value": ("class", values)})
    missing = counts.isel({"class": np.flatnonzero(is_nodata)}).sum("class")
    total = max(int(np.prod([mask.sizes[d] for d in dims])), 1)
    valid = total - missing
    fractions = counts.isel({"class": np.flatnonzero(~is_nodata)}) / valid.where(valid > 0)
    fractions = fractions.transpose(..., "class").assign_coords(no_data=missing / total)
    fractions.attrs = {"long_name": "fraction of the valid pixels in each class", "units": "1"}
    return fractions.rename("class_fraction")


# -- helpers --------------------------------------------------------------------------------


def _classes(mask: Any) -> tuple[list[str], list[str]]:
    """Class names and colours (``#808080`` where none is given) from the flag attributes."""
    if not isinstance(mask, xr.DataArray) or "flag_values" not in mask.attrs:
        raise DatasetError(
            "a class mask is needed: a DataArray with flag_values/flag_meanings attributes "
            "(from xcloud.predict with output='class'); probabilities have no classes"
        )
    values = np.atleast_1d(mask.attrs["flag_values"])
    names = str(mask.attrs.get("flag_meanings", "")).split()
    colors = str(mask.attrs.get("flag_colors", "")).split() or ["#808080"] * len(values)
    if not len(names) == len(colors) == len(values):
        raise DatasetError("the mask's flag_values, flag_meanings and flag_colors have "
                           f"different lengths ({len(values)}, {len(names)}, {len(colors)})")
    return names, colors


def _at_time(obj: xr.DataArray | xr.Dataset, time: Any) -> Any:
    """``obj`` at one time step: an index, a label (nearest), or a time coordinate."""
    if "time" not in obj.dims or time is None:
        return obj
    if isinstance(time, xr.DataArray):
        time = time.values
    if isinstance(time, (int, np.integer)):
        return obj.isel(time=int(time))
    return obj.sel(time=time, method="nearest")


def _extent(frame: xr.DataArray) -> tuple[float, float, float, float] | None:
    """Outer edges (left, right, bottom, top) of the pixel grid for ``imshow``."""
    if not all(d in frame.coords and frame[d].size > 1 for d in ("x", "y")):
        return None
    x, y = frame["x"].values.astype(float), frame["y"].values.astype(float)
    dx, dy = x[1] - x[0], y[1] - y[0]
    return x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2


def _title(frame: xr.DataArray) -> str:
    parts = [str(frame.attrs.get("model", frame.name or "mask"))]
    when = frame.coords.get("time")
    if when is not None and when.ndim == 0:
        value = when.values
        is_date = np.issubdtype(value.dtype, np.datetime64)
        parts.append(np.datetime_as_string(value, unit="m").replace("T", " ") if is_date
                     else str(value))
    return " | ".join(parts)


def _has_rgb(data: xr.Dataset | None) -> TypeGuard[xr.Dataset]:
    return data is not None and all(any(n in data for n in names) for names in RGB_BANDS)


def _class_map(frame: xr.DataArray, colors: list[str], max_size: int) -> np.ndarray:
    """(H, W, 4) float image of every class in its colour (transparent for other values)."""
    from matplotlib.colors import to_rgba_array

    step = subsample_step(frame.shape, max_size)
    labels = np.asarray(frame.values[::step, ::step])
    image = np.zeros((*labels.shape, 4))
    for value, rgba in zip(np.atleast_1d(frame.attrs["flag_values"]), to_rgba_array(colors),
                           strict=True):
        image[labels == value] = rgba
    return image


def _patches(names: list[str], colors: list[str], hollow: Collection[str]) -> list[Any]:
    """Legend patches: filled in the class colour, hollow for classes left unpainted."""
    from matplotlib.patches import Patch

    return [Patch(edgecolor=color, facecolor="none", linewidth=1.5, label=name)
            if name in hollow else Patch(edgecolor="0.3", facecolor=color, linewidth=0.5,
                                         label=name)
            for name, color in zip(names, colors, strict=True)]
