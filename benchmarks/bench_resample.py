"""xcloud's numba resampling kernels against their closest scipy/xarray equivalents.

Each kernel and its reference run on the same input in one process, after a warm-up (numba
compiles on first call); times are the best of ``--repeats`` runs, xcloud's and the reference's
alternated so that other load on the machine affects both alike. Upsampling works on one band of
``--size`` pixels square (default 5490: a 20 m Sentinel-2 band going to 10 m), downsampling on a
mask ``--factor`` times larger (default 10980: a 10 m mask going to 20 m). ``--size 1830
--factor 6`` is a 60 m band going to 10 m.

    python benchmarks/bench_resample.py [--size N] [--factor F] [--repeats R]
    python benchmarks/bench_resample.py --quick    # 1024 px band, 2 repeats
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import _common
import numpy as np
import scipy.stats
import xarray as xr
from scipy import ndimage

from xcloud.data import resample
from xcloud.data.resample import _blackman_sinc, _phase_table

__all__ = ["main"]

QUICK_SIZE, QUICK_REPEATS = 1024, 2


@dataclass(frozen=True)
class Case:
    """One comparison: xcloud's function and the reference, on the same input."""

    method: str
    reference: str
    shape: tuple[int, ...]
    ours: Callable[[], np.ndarray]
    theirs: Callable[[], np.ndarray]
    exact: bool


def timed_ms(function: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Wall time of one call in milliseconds, and its result."""
    start = time.perf_counter()
    result = function()
    return 1e3 * (time.perf_counter() - start), result


def best_ms(case: Case, repeats: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Best times of xcloud and the reference, alternated so that load affects both alike."""
    ours_ms, theirs_ms = [], []
    for _ in range(repeats):
        ms, ours = timed_ms(case.ours)
        ours_ms.append(ms)
        ms, theirs = timed_ms(case.theirs)
        theirs_ms.append(ms)
    return min(ours_ms), min(theirs_ms), ours, theirs


def scipy_sinc(band: np.ndarray, factor: int, lobes: int = 3) -> np.ndarray:
    """Separable Blackman-windowed sinc with ``ndimage.correlate1d``, one call per phase/axis."""
    weights, offsets = _phase_table(factor, lobes, _blackman_sinc)
    taps = weights.shape[1]

    def along(array: np.ndarray, axis: int) -> np.ndarray:
        shape = list(array.shape)
        shape[axis] *= factor
        out = np.empty(shape, np.float32)
        for phase in range(factor):
            index = [slice(None)] * array.ndim
            index[axis] = slice(phase, None, factor)
            out[tuple(index)] = ndimage.correlate1d(
                array, weights[phase], axis=axis, mode="nearest", output=np.float32,
                origin=-(int(offsets[phase]) + taps // 2),
            )
        return out

    return along(along(band, 1), 0)


def scipy_block_mode(mask: np.ndarray, factor: int) -> np.ndarray:
    """``scipy.stats.mode`` of the blocks (ties: smallest value), sizes multiple of factor."""
    height, width = mask.shape
    blocks = mask.reshape(height // factor, factor, width // factor, factor).swapaxes(1, 2)
    blocks = blocks.reshape(height // factor, width // factor, factor * factor)
    return scipy.stats.mode(blocks, axis=-1, keepdims=False).mode.astype(np.uint8)


def xarray_block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    return xr.DataArray(values, dims=("y", "x")).coarsen(y=factor, x=factor).mean().values


def cases(size: int, factor: int) -> list[Case]:
    rng = np.random.default_rng(0)
    band = rng.random((size, size), dtype=np.float32)
    fine = size * factor
    mask = rng.integers(0, 4, (fine, fine), dtype=np.uint8)  # no nodata: scipy cannot skip it
    proba = rng.random((fine, fine), dtype=np.float32)
    proba[rng.random((fine, fine)) < 0.01] = np.nan
    labels = mask[:size, :size]
    zoom = {"zoom": factor, "grid_mode": True, "mode": "nearest"}
    return [
        Case("bilinear", "ndimage.zoom(order=1)", band.shape,
             lambda: resample.upsample_bilinear(band, factor),
             lambda: ndimage.zoom(band, order=1, **zoom), exact=False),
        Case("sinc", "ndimage.correlate1d x 2F", band.shape,
             lambda: resample.upsample_sinc(band, factor),
             lambda: scipy_sinc(band, factor), exact=False),
        Case("nearest", "np.repeat x 2", labels.shape,
             lambda: resample.upsample_nearest(labels, factor),
             lambda: np.repeat(np.repeat(labels, factor, 1), factor, 0), exact=True),
        Case("nearest", "ndimage.zoom(order=0)", labels.shape,
             lambda: resample.upsample_nearest(labels, factor),
             lambda: ndimage.zoom(labels, order=0, **zoom), exact=True),
        Case("majority", "scipy.stats.mode", mask.shape,
             lambda: resample.downsample_majority(mask, factor, nodata=None),
             lambda: scipy_block_mode(mask, factor), exact=True),
        Case("mean", "xarray coarsen.mean", proba.shape,
             lambda: resample.downsample_mean(proba, factor),
             lambda: xarray_block_mean(proba, factor), exact=False),
    ]


def agreement(ours: np.ndarray, theirs: np.ndarray, exact: bool) -> str:
    """'exact' / 'DIFFERENT' for classes, the max abs difference for floats."""
    if exact:
        return "exact" if np.array_equal(ours, theirs) else "DIFFERENT"
    if not np.array_equal(np.isnan(ours), np.isnan(theirs)):
        return "NaN differ"
    return f"max diff {np.nanmax(np.abs(ours - theirs)):.1e}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5490, help="band size for upsampling")
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SIZE} px band, {QUICK_REPEATS} repeats: a smoke run")
    args = parser.parse_args(argv)
    size, repeats = (QUICK_SIZE, QUICK_REPEATS) if args.quick else (args.size, args.repeats)
    _common.print_header("bench_resample: numba resampling kernels vs scipy/xarray",
                         size=size, factor=args.factor, repeats=repeats, threads=1)
    print("| method | reference | input | xcloud ms | reference ms | speed-up | agreement "
          f"| {_common.NOISE_HEADER} |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases(size, args.factor):
        case.ours()  # numba compiles (or loads its cache) on the first call
        with _common.stopwatch() as meter:
            ours_ms, theirs_ms, ours, theirs = best_ms(case, repeats)
        shape = " x ".join(str(n) for n in case.shape)
        op = "/" if case.method in ("majority", "mean") else "x"
        print(f"| {case.method} {op}{args.factor} | {case.reference} | {shape} | {ours_ms:.1f} "
              f"| {theirs_ms:.1f} | {theirs_ms / ours_ms:.1f}x "
              f"| {agreement(ours, theirs, case.exact)} | {meter.noise} |", flush=True)
    print()


if __name__ == "__main__":
    main()
