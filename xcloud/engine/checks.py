"""Plausibility checks of a chunk before the model runs, and of the model's output after.

Never a silent wrong mask: input that cannot be reflectance stops the job with a typed error
naming the likely cause, pixels that cannot be valid become no data (counted and reported),
and a pixel whose probabilities are not finite is no data, never the argmax of NaN (class 0).

Thresholds, from the sensors' physics (Sentinel-2 L1C/L2A and Landsat reflectance):

======================  =========  ==========================================================
check                   threshold  why
======================  =========  ==========================================================
lowest reflectance      -0.2       the lowest valid value is -0.1: DN 1 with the -1000 DN
                                   offset of processing baseline >= 04.00; noise and
                                   atmospheric correction over dark water stay within 0.1
highest reflectance     6.6        the largest value a Sentinel-2 product encodes: 65535 DN
                                   = 6.5535 (saturated pixels); real scenes reach ~3 (sun
                                   glint, hot spots)
digital numbers         2.0        most values of a band above 2 (reflectance x 10000, or %)
too dark                0.01       the median of *every* band below 1 %: even the darkest
                                   scenes have visible-band medians above 2 % (Rayleigh
                                   scattering, water-leaving radiance); a scale off by 10
======================  =========  ==========================================================

Only reflectance bands are checked (Sentinel-2's B01 .. B12, B8A; Landsat's reflective
bands): AOT, WVP and other auxiliary or non-optical inputs have units of their own.

A band whose *most* valid values fall outside the range, or a chunk too dark in every band,
is an error whatever ``invalid=`` says (a wrong scale or offset; no data would hide it).
Isolated pixels outside the range, and pixels with NaN or infinity in some bands but not all,
follow ``invalid=``: ``"nodata"`` (default) marks them no data with a
:class:`~xcloud.errors.InvalidPixelsWarning`, ``"raise"`` refuses them.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..data.bands import band as band_record
from ..errors import InvalidPixelsWarning, InvalidReflectanceError, ModelOutputError

__all__ = [
    "DARK_LIMIT",
    "DN_LIKE",
    "MAX_REFLECTANCE",
    "MIN_REFLECTANCE",
    "NONFINITE_SHARE",
    "check_input",
    "count_nonfinite",
    "invalid_pixels",
    "nonfinite_pixels",
    "reflectance_bands",
    "take_counts",
]

MIN_REFLECTANCE = -0.2
MAX_REFLECTANCE = 6.6
DN_LIKE = 2.0
DARK_LIMIT = 0.01
DARK_MIN_PIXELS = 1000
NONFINITE_SHARE = 0.01
"""With ``strict=True``, a chunk where the model's output is not finite for more than this
share of the valid pixels raises :class:`~xcloud.errors.ModelOutputError`."""

_COUNTS: Counter[tuple[str, str]] = Counter()
_LOCK = threading.Lock()


def _record(token: str, kind: str, count: int) -> None:
    if token and count:
        with _LOCK:
            _COUNTS[token, kind] += count


def take_counts(token: str) -> dict[str, int]:
    """The pixels this process marked no data for the job ``token`` (``invalid_input``,
    ``nonfinite_output``), forgotten once taken."""
    with _LOCK:
        found = {kind: _COUNTS.pop((t, kind)) for t, kind in list(_COUNTS) if t == token}
    return found


def reflectance_bands(bands: Sequence[str]) -> list[int]:
    """Indices of the bands that hold reflectance (optical bands with a wavelength)."""
    return [i for i, name in enumerate(bands) if _is_reflectance(name)]


def _is_reflectance(name: str) -> bool:
    try:
        record = band_record(name)
    except (KeyError, ValueError):
        landsat = name.lower().startswith(("landsat-8:", "landsat-9:"))
        return landsat and name.split(":")[-1].upper() not in ("B10", "B11")  # thermal
    return record.wavelength_min is not None and record.name not in ("AOT", "WVP")


def check_input(image: np.ndarray, valid: np.ndarray, bands: Sequence[str]) -> None:
    """Raise :class:`InvalidReflectanceError` when the valid pixels of a chunk (bands, y, x)
    cannot be reflectance: a reflectance band mostly above :data:`DN_LIKE` or below
    :data:`MIN_REFLECTANCE`, or every reflectance band darker than :data:`DARK_LIMIT`."""
    n_valid = int(np.count_nonzero(valid))
    chosen = reflectance_bands(bands)
    if not n_valid or not chosen:
        return
    # band by band, on masks: no copy of the chunk's values (this runs for every chunk)
    sample = (np.flatnonzero(valid)[::max(1, n_valid // 20000)]  # enough for a median
              if n_valid >= DARK_MIN_PIXELS else None)
    medians = []
    for index in chosen:
        band, values = bands[index], image[index]
        with np.errstate(invalid="ignore"):
            above = np.count_nonzero((values > DN_LIKE) & valid)
            below = np.count_nonzero((values < MIN_REFLECTANCE) & valid)
        if above > n_valid // 2:
            raise InvalidReflectanceError(
                f"band {band}: most values exceed a reflectance of {DN_LIKE:g}: it looks like "
                "digital numbers (reflectance x 10000) or percent; pass scale=0.0001 (and "
                "offset=-0.1 from processing baseline 04.00), convert that band, or use "
                "xcloud.load()")
        if below > n_valid // 2:
            raise InvalidReflectanceError(
                f"band {band}: most values are below {MIN_REFLECTANCE:g}, and reflectance "
                "cannot be below -0.1 (the -1000 DN offset of baseline >= 04.00 on DN 1): an "
                "offset applied twice or a wrong one (check the items' raster:bands offset and "
                "earthsearch:boa_offset_applied, or the offset= you passed)")
        if sample is not None:
            medians.append((band, float(np.median(values.ravel()[sample]))))
    if medians and all(median < DARK_LIMIT for _, median in medians):
        raise InvalidReflectanceError(
            f"the chunk is far too dark in every band (medians "
            f"{', '.join(f'{b} {m:.4f}' for b, m in medians)}, all below {DARK_LIMIT:g}): "
            "real scenes are brighter; a scale off by a factor of 10 (e.g. DN / 100000)? "
            "Check scale= or the items' raster:bands")


def invalid_pixels(image: np.ndarray, empty: np.ndarray, *, invalid: str, token: str = "",
                   region: tuple[slice, slice] | None = None,
                   bands: Sequence[str] | None = None,
                   finite: np.ndarray | None = None) -> np.ndarray:
    """Pixels (y, x) that are not no data but cannot be valid: NaN or infinity in some bands
    but not all, or values outside [:data:`MIN_REFLECTANCE`, :data:`MAX_REFLECTANCE`].

    With ``invalid="raise"`` their presence raises :class:`InvalidReflectanceError`; with
    ``"nodata"`` they are returned (to be marked no data), counted for ``token`` and reported
    with an :class:`InvalidPixelsWarning`, those inside ``region`` only (a chunk's own pixels,
    not its halo, so that each pixel is counted once). ``finite`` (y, x), all bands finite,
    is computed when not given.
    """
    if finite is None:
        finite = np.isfinite(image).all(axis=0)
    outside = np.zeros(empty.shape, bool)
    for index in range(len(image)) if bands is None else reflectance_bands(bands):
        with np.errstate(invalid="ignore"):
            outside |= (image[index] < MIN_REFLECTANCE) | (image[index] > MAX_REFLECTANCE)
    partial = ~finite & ~empty
    absurd = outside & ~empty & ~partial
    bad = partial | absurd
    if not bad.any():
        return bad
    inside = (slice(None), slice(None)) if region is None else region
    n_partial, n_absurd = (int(np.count_nonzero(m[inside])) for m in (partial, absurd))
    what = (f"{n_partial} pixels of a chunk have NaN or infinite values in some bands but not "
            f"all, {n_absurd} have values outside [{MIN_REFLECTANCE:g}, {MAX_REFLECTANCE:g}]")
    count = n_partial + n_absurd
    if invalid != "nodata":
        raise InvalidReflectanceError(f"{what}; fill or fix them, or pass invalid='nodata' to "
                                      "mark them as no data")
    if count:
        _record(token, "invalid_input", count)
        warnings.warn(f"{what}: marked as no data (invalid='raise' refuses them)",
                      InvalidPixelsWarning, stacklevel=2)
    return bad


def nonfinite_pixels(proba: np.ndarray, empty: np.ndarray, *, strict: bool, token: str = "",
                     region: tuple[slice, slice] | None = None) -> np.ndarray:
    """Pixels (y, x) outside ``empty`` whose probabilities (classes, y, x) are not all
    finite: no data, counted (inside ``region``, the chunk's own pixels) for ``token`` and
    reported; with ``strict`` a chunk where they are more than :data:`NONFINITE_SHARE` of the
    valid pixels raises :class:`~xcloud.errors.ModelOutputError`."""
    return count_nonfinite(~np.isfinite(proba).all(axis=0), empty, strict=strict, token=token,
                           region=region)


def count_nonfinite(nonfinite: np.ndarray, empty: np.ndarray, *, strict: bool,
                    token: str = "", region: tuple[slice, slice] | None = None) -> np.ndarray:
    """:func:`nonfinite_pixels` given where the probabilities are not finite (y, x)."""
    bad = nonfinite & ~empty
    inside = (slice(None), slice(None)) if region is None else region
    count = int(np.count_nonzero(bad[inside]))
    if not count:
        return bad
    share = count / max(1, int(np.count_nonzero(~empty[inside])))
    what = (f"the model's output is not finite (NaN or infinity) for {count} pixels of a chunk "
            f"({100 * share:.2g} % of its valid pixels)")
    if strict and share > NONFINITE_SHARE:
        raise ModelOutputError(f"{what}: corrupt weights, an overflow in a reduced-precision "
                               "runtime, or absurd input values; check weights= and the input")
    _record(token, "nonfinite_output", count)
    warnings.warn(f"{what}: marked as no data, never a class", InvalidPixelsWarning,
                  stacklevel=2)
    return bad
