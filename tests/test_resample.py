"""The numba resampling kernels against plain numpy references, and their Dask/xarray wrappers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xcloud.data.resample import (
    NO_CLASS,
    block_sums,
    downsample_majority,
    downsample_mean,
    resample_dask,
    resample_dataarray,
    upsample_bilinear,
    upsample_bilinear_argmax,
    upsample_bilinear_argmax_dask,
    upsample_nearest,
    upsample_sinc,
    weighted_mean,
)

RNG = np.random.default_rng(42)


# ---------------------------------------------------------------- plain references


def reference_sum(image: np.ndarray, factor: int) -> np.ndarray:
    """float64 sums of the factor x factor blocks (partial blocks at the far edges)."""
    rows, cols = -(-image.shape[0] // factor), -(-image.shape[1] // factor)
    return np.array([[image[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor]
                      .astype(np.float64).sum() for c in range(cols)] for r in range(rows)])


def interpolation_matrix(n_in: int, n_out: int, factor: int, weight, lobes: int) -> np.ndarray:
    """(n_out, n_in) float64: row i interpolates at coarse coordinate (i + 0.5) / factor - 0.5."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        u = (i + 0.5) / factor - 0.5
        base = int(np.floor(u))
        taps = np.arange(base - lobes + 1, base + lobes + 1)
        w = weight(u - taps, lobes)
        for tap, value in zip(taps, w / w.sum(), strict=True):
            matrix[i, min(max(tap, 0), n_in - 1)] += value
    return matrix


def triangle(x: np.ndarray, lobes: int) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


def blackman_sinc(x: np.ndarray, lobes: int) -> np.ndarray:
    window = 0.42 + 0.5 * np.cos(np.pi * x / lobes) + 0.08 * np.cos(2 * np.pi * x / lobes)
    return np.sinc(x) * np.where(np.abs(x) < lobes, window, 0.0)


def reference_separable(array: np.ndarray, factor: int, weight, lobes: int,
                        out_shape: tuple[int, int] | None = None) -> np.ndarray:
    height, width = array.shape[-2:]
    out_h, out_w = out_shape or (height * factor, width * factor)
    rows = interpolation_matrix(height, out_h, factor, weight, lobes)
    cols = interpolation_matrix(width, out_w, factor, weight, lobes)
    return rows @ array.astype(np.float64) @ cols.T


def reference_bilinear(array: np.ndarray, factor: int) -> np.ndarray:
    """Clamp the source coordinate (torch's formulation), float64."""
    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
        low = np.floor(u).astype(int)
        return low, np.minimum(low + 1, n - 1), u - low

    y0, y1, wy = axis(array.shape[-2])
    x0, x1, wx = axis(array.shape[-1])
    a = array.astype(np.float64)
    top = a[..., y0, :] * (1 - wy)[:, None] + a[..., y1, :] * wy[:, None]
    return top[..., x0] * (1 - wx) + top[..., x1] * wx


def blocks_of(array: np.ndarray, factor: int):
    """(j, c, block) of every factor x factor block of a 2-D array, partial ones included."""
    for j in range(0, array.shape[0], factor):
        for c in range(0, array.shape[1], factor):
            yield j // factor, c // factor, array[j:j + factor, c:c + factor]


def reference_majority(labels: np.ndarray, factor: int, nodata: int | None) -> np.ndarray:
    height, width = labels.shape
    out = np.empty((-(-height // factor), -(-width // factor)), np.uint8)
    for j, c, block in blocks_of(labels, factor):
        valid = block[block != nodata] if nodata is not None else block.ravel()
        if valid.size == 0:
            out[j, c] = nodata
            continue
        values, counts = np.unique(valid, return_counts=True)  # sorted: argmax takes the smallest
        out[j, c] = values[np.argmax(counts)]
    return out


def reference_mean(values: np.ndarray, factor: int) -> np.ndarray:
    height, width = values.shape
    out = np.empty((-(-height // factor), -(-width // factor)), np.float64)
    for j, c, block in blocks_of(values, factor):
        finite = block[~np.isnan(block)]
        out[j, c] = finite.mean() if finite.size else np.nan
    return out


def stacked(reference, array: np.ndarray, *args) -> np.ndarray:
    """A 2-D reference applied to every image of (..., y, x)."""
    flat = array.reshape(-1, *array.shape[-2:])
    out = np.stack([reference(image, *args) for image in flat])
    return out.reshape(*array.shape[:-2], *out.shape[-2:])


# ---------------------------------------------------------------- upsampling


@pytest.mark.parametrize(("shape", "factor"), [((7, 9), 2), ((2, 5, 4), 3), ((1, 6), 4),
                                               ((3, 1, 11, 8), 6), ((4, 4), 1)])
def test_bilinear_matches_reference(shape, factor):
    array = RNG.random(shape, dtype=np.float32)
    out = upsample_bilinear(array, factor)
    assert out.dtype == np.float32
    assert out.shape == (*shape[:-2], shape[-2] * factor, shape[-1] * factor)
    np.testing.assert_allclose(out, stacked(reference_bilinear, array, factor),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 3])
def test_bilinear_matches_torch(factor):
    torch = pytest.importorskip("torch")
    array = RNG.random((3, 24, 30), dtype=np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(array)[None], size=(24 * factor, 30 * factor), mode="bilinear",
        align_corners=False,
    )[0].numpy()
    np.testing.assert_allclose(upsample_bilinear(array, factor), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("shape", "factor", "lobes"), [((7, 9), 2, 3), ((2, 10, 5), 3, 3),
                                                        ((13, 4), 6, 2), ((5, 8), 2, 1)])
def test_sinc_matches_reference(shape, factor, lobes):
    array = RNG.random(shape, dtype=np.float32)
    out = upsample_sinc(array, factor, lobes=lobes)
    assert out.dtype == np.float32
    expected = stacked(reference_separable, array, factor, blackman_sinc, lobes)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_bilinear_is_sinc_reference_with_a_triangle():
    array = RNG.random((6, 7), dtype=np.float32)
    expected = reference_separable(array, 3, triangle, 1)
    np.testing.assert_allclose(upsample_bilinear(array, 3), expected, rtol=1e-5, atol=1e-6)


def test_sinc_keeps_constants_and_ramps():
    constant = np.full((9, 11), 0.3172, np.float32)
    assert np.array_equal(upsample_sinc(constant, 2), np.full((18, 22), 0.3172, np.float32))
    ramp = np.add.outer(0.5 * np.arange(20.0), 0.25 * np.arange(20.0)).astype(np.float32)
    out = upsample_sinc(ramp, 2, lobes=3)
    centres = (np.arange(40) + 0.5) / 2 - 0.5
    expected = np.add.outer(0.5 * centres, 0.25 * centres)
    inner = (slice(12, -12),) * 2  # the window reaches 3 coarse pixels: edges replicate
    # a windowed sinc is not exactly linear-preserving; Blackman with 3 lobes is close
    np.testing.assert_allclose(out[inner], expected[inner], atol=0.01)
    assert np.abs(out - expected).max() > 0.1  # and the replicated edges are not a ramp


def test_sinc_beats_bilinear_on_a_band_limited_signal():
    fine = (np.arange(256) + 0.5) / 4 - 0.5  # coarse coordinates of a 4x finer grid
    wave = lambda t: np.sin(2 * np.pi * 0.3 * t)  # noqa: E731  (0.6 of Nyquist)
    coarse = np.tile(wave(np.arange(64.0)), (8, 1)).astype(np.float32)
    truth = wave(fine)[16:-16]
    sinc_error = np.abs(upsample_sinc(coarse, 4)[16, 16:-16] - truth).max()
    bilinear_error = np.abs(upsample_bilinear(coarse, 4)[16, 16:-16] - truth).max()
    assert sinc_error < 0.5 * bilinear_error


@pytest.mark.parametrize("function", [upsample_bilinear, upsample_sinc, upsample_nearest])
def test_out_shape_crops(function):
    array = RNG.random((2, 5, 7), dtype=np.float32)
    full = function(array, 3)
    cropped = function(array, 3, out_shape=(13, 20))
    assert cropped.shape == (2, 13, 20)
    np.testing.assert_array_equal(cropped, full[..., :13, :20])
    with pytest.raises(ValueError, match="out_shape"):
        function(array, 3, out_shape=(16, 20))


def test_nan_propagates_to_the_footprint():
    array = np.ones((8, 8), np.float32)
    array[4, 4] = np.nan
    bilinear = np.isnan(upsample_bilinear(array, 2))
    assert bilinear[7:11, 7:11].all() and bilinear.sum() == 16
    sinc = np.isnan(upsample_sinc(array, 2, lobes=2))
    assert sinc[8:10, 8:10].all() and not sinc[0].any()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, bool])
def test_nearest_repeats_pixels(dtype):
    labels = RNG.integers(0, 5, (2, 3, 5, 7)).astype(dtype)
    out = upsample_nearest(labels, 3)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(out, labels.repeat(3, axis=-2).repeat(3, axis=-1))


# ---------------------------------------------------------------- downsampling


@pytest.mark.parametrize(("shape", "factor"), [((9, 11), 2), ((2, 7, 13), 3), ((12, 12), 4),
                                               ((1, 2, 5, 6), 6), ((5, 3), 1)])
def test_majority_matches_reference(shape, factor):
    labels = RNG.integers(0, 4, shape, dtype=np.uint8)
    labels[RNG.random(shape) < 0.3] = 255
    for nodata in (255, None, 2):
        out = downsample_majority(labels, factor, nodata=nodata)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, stacked(reference_majority, labels, factor, nodata))


def test_majority_ties_and_nodata():
    labels = np.array([[3, 1, 255, 255, 7, 255],
                       [1, 3, 255, 255, 255, 255]], np.uint8)
    np.testing.assert_array_equal(downsample_majority(labels, 2), [[1, 255, 7]])
    np.testing.assert_array_equal(downsample_majority(labels, 2, nodata=None), [[1, 255, 255]])
    np.testing.assert_array_equal(downsample_majority(labels, 2, nodata=1), [[3, 255, 255]])
    np.testing.assert_array_equal(downsample_majority(labels, 3), [[1, 7]])  # partial blocks


@pytest.mark.parametrize(("shape", "factor"), [((9, 11), 2), ((2, 7, 13), 3), ((12, 12), 4),
                                               ((1, 2, 5, 6), 6), ((5, 3), 1)])
def test_mean_matches_reference(shape, factor):
    values = RNG.random(shape, dtype=np.float32)
    values[RNG.random(shape) < 0.2] = np.nan
    values[..., :factor, :factor] = np.nan  # one all-NaN block
    out = downsample_mean(values, factor)
    assert out.dtype == np.float32
    assert np.isnan(out[..., 0, 0]).all()
    np.testing.assert_allclose(out, stacked(reference_mean, values, factor), rtol=1e-5)


@pytest.mark.parametrize(("factor", "cut"), [(3, (50, 40)), (3, (51, 1)), (2, (7, 8)), (1, (3, 4))])
def test_block_sums_of_pieces_add_up_to_the_whole(factor, cut):
    values = RNG.random((2, 99, 99), dtype=np.float32)
    whole = block_sums(values, factor)
    assert whole.dtype == np.float64 and whole.shape == (2, -(-99 // factor), -(-99 // factor))
    np.testing.assert_array_equal(whole, stacked(reference_sum, values, factor))
    total = np.zeros_like(whole)
    (row, col) = cut
    for rows in (slice(0, row), slice(row, 99)):
        for cols in (slice(0, col), slice(col, 99)):
            offset = (rows.start % factor, cols.start % factor)
            piece = block_sums(values[:, rows, cols], factor, offset)
            top, left = rows.start // factor, cols.start // factor
            total[:, top:top + piece.shape[1], left:left + piece.shape[2]] += piece
    np.testing.assert_array_equal(total, whole)  # float64 sums of float32: exact
    if 99 % factor == 0:
        np.testing.assert_array_equal((whole / factor**2).astype(np.float32),
                                      downsample_mean(values, factor))


def test_block_sums_refuses_an_offset_outside_the_block():
    with pytest.raises(ValueError, match="offset"):
        block_sums(np.ones((4, 4)), 2, (2, 0))


def test_mean_of_float64_and_integers():
    values = RNG.random((10, 6))
    np.testing.assert_allclose(downsample_mean(values, 3), reference_mean(values, 3), rtol=1e-6)
    counts = RNG.integers(0, 100, (4, 4), dtype=np.uint8)
    np.testing.assert_allclose(downsample_mean(counts, 2), reference_mean(counts * 1.0, 2))


# ---------------------------------------------------------------- checks


def test_empty_arrays():
    assert upsample_bilinear(np.zeros((0, 3)), 2).shape == (0, 6)
    assert upsample_sinc(np.zeros((2, 0, 3)), 2).shape == (2, 0, 6)
    assert upsample_nearest(np.zeros((0, 4, 3), np.uint8), 3).shape == (0, 12, 9)
    assert downsample_mean(np.zeros((2, 0, 4)), 2).shape == (2, 0, 2)
    assert downsample_majority(np.zeros((3, 0), np.uint8), 2).shape == (2, 0)


@pytest.mark.parametrize("factor", [0, -2, 1.5, 2.0, True, "2"])
def test_bad_factor(factor):
    array = np.zeros((4, 4), np.float32)
    for function in (upsample_bilinear, upsample_sinc, upsample_nearest, downsample_mean):
        with pytest.raises(ValueError, match="factor must be an integer >= 1"):
            function(array, factor)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        upsample_bilinear(np.zeros(5, np.float32), 2)
    with pytest.raises(TypeError, match="uint8"):
        downsample_majority(np.zeros((4, 4), np.int32), 2)
    with pytest.raises(ValueError, match="nodata"):
        downsample_majority(np.zeros((4, 4), np.uint8), 2, nodata=300)
    with pytest.raises(ValueError, match="lobes"):
        upsample_sinc(np.zeros((4, 4), np.float32), 2, lobes=0)
    with pytest.raises(ValueError, match="'bilinear', 'sinc', 'nearest', 'majority', 'mean'"):
        resample_dask(da.zeros((4, 4)), 2, method="cubic")
    with pytest.raises(ValueError, match="factor"):
        resample_dask(da.zeros((4, 4)), 0, method="mean")
    with pytest.raises(ValueError, match="out_shape is for upsampling"):
        resample_dask(da.zeros((4, 4)), 2, method="mean", out_shape=(2, 2))


def test_package_import_does_not_load_the_kernels():
    code = "import sys, xcloud, xcloud.data; print('xcloud.data.resample' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


PREDICT_OFF_GRID = """
import json, warnings
import xcloud
from xcloud.data import resample
from xcloud.synthetic import synthetic_scene
warnings.simplefilter("ignore")
xcloud.predict(synthetic_scene(96), model="ukis-6b-l1c")  # a 30 m model on 10 m data
kernels = [resample._block_sums_kernel, resample._bilinear_argmax_kernel]
print(json.dumps([[len(k.stats.cache_hits), len(k.stats.cache_misses)] for k in kernels]))
"""


def run_predict_off_grid(cache: Path) -> list[list[int]]:
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    result = subprocess.run([sys.executable, "-c", PREDICT_OFF_GRID], capture_output=True,
                            text=True, check=True, env=environment)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_compiled_kernels_are_what_predict_calls_off_the_model_grid(tmp_path):
    """compile_kernels fills numba's cache with the signatures predict's chunks call: a later
    process loads each of them from the cache and compiles none (a container image can be
    built with the cache in it)."""
    cache = tmp_path / "numba-cache"
    assert run_predict_off_grid(cache) == [[0, 2], [0, 1]]  # empty cache: compiled
    fresh = tmp_path / "fresh-cache"
    code = "from xcloud.data.resample import compile_kernels; compile_kernels()"
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "NUMBA_CACHE_DIR": str(fresh)})
    assert run_predict_off_grid(fresh) == [[2, 0], [1, 0]]


# ---------------------------------------------------------------- Dask and xarray

UNEVEN = ((1, 2), (7, 1, 5, 4), (3, 9, 2, 6))  # (t, y, x) chunks of a (3, 17, 20) array


@pytest.mark.parametrize(("method", "kwargs"), [
    ("bilinear", {}), ("sinc", {}), ("sinc", {"lobes": 2}), ("nearest", {}),
    ("bilinear", {"crop": (1, 3)}), ("sinc", {"crop": (5, 2)}), ("nearest", {"crop": (2, 1)}),
    ("sinc", {"crop": (13, 1)}),  # the last row of chunks adds nothing: it is left out
    ("majority", {}), ("majority", {"nodata": None}), ("mean", {}),
])
@pytest.mark.parametrize("factor", [2, 3])
def test_dask_equals_whole_array(method, kwargs, factor):
    if "crop" in kwargs:
        crop = kwargs.pop("crop")
        kwargs["out_shape"] = (17 * factor - crop[0], 20 * factor - crop[1])
    if method in ("majority", "nearest"):
        array = RNG.integers(0, 4, (3, 17, 20), dtype=np.uint8)
        array[RNG.random(array.shape) < 0.2] = 255
    else:
        array = RNG.random((3, 17, 20), dtype=np.float32)
        if method == "mean":
            array[RNG.random(array.shape) < 0.2] = np.nan
    whole = {"bilinear": upsample_bilinear, "sinc": upsample_sinc, "nearest": upsample_nearest,
             "majority": downsample_majority, "mean": downsample_mean}[method](
                 array, factor, **kwargs)
    lazy = resample_dask(da.from_array(array, chunks=UNEVEN), factor, method=method, **kwargs)
    assert lazy.shape == whole.shape and lazy.dtype == whole.dtype
    assert lazy.shape[-2:] == kwargs.get("out_shape", lazy.shape[-2:])
    computed = lazy.compute(scheduler="sync")
    assert computed.shape == whole.shape  # the declared chunks are the real ones
    np.testing.assert_array_equal(computed, whole)


@pytest.mark.parametrize("method", ["sinc", "nearest"])
def test_dask_upsampling_runs_one_task_per_output_chunk(method):
    source = da.from_array(RNG.random((2, 24, 30), dtype=np.float32), chunks=(1, 8, 10))
    lazy = resample_dask(source, 2, method=method, out_shape=(45, 60))
    graph = lazy.__dask_graph__()
    assert set(graph.layers) == {source.name, lazy.name}  # no halo or crop layers
    assert len(graph.layers[lazy.name]) == lazy.npartitions == 2 * 3 * 3
    assert lazy.chunks[-2:] == ((16, 16, 13), (20, 20, 20))


def test_dask_on_arrays_smaller_than_the_halo():
    array = RNG.random((2, 3), dtype=np.float32)
    lazy = resample_dask(da.from_array(array, chunks=1), 2, method="sinc")
    np.testing.assert_array_equal(lazy.compute(), upsample_sinc(array, 2))


def scene(chunks: dict | None = None) -> xr.DataArray:
    x = 500000.0 + 20 * (np.arange(6) + 0.5)
    y = 5800000.0 - 20 * (np.arange(5) + 0.5)
    ref = xr.DataArray(0, attrs={"GeoTransform": "500000.0 20.0 0.0 5800000.0 0.0 -20.0",
                                 "crs_wkt": "EPSG:32633"})
    values = np.random.default_rng(7).random((5, 2, 6), dtype=np.float32)
    array = xr.DataArray(values, dims=("y", "band", "x"),
                         coords={"y": y, "x": x, "band": ["B11", "B12"], "spatial_ref": ref,
                                 "row": ("y", np.arange(5))},
                         attrs={"units": "1"}, name="reflectance")
    return array.chunk(chunks) if chunks else array


@pytest.mark.parametrize("chunks", [None, {"y": 2, "x": 4}])
def test_dataarray_upsampling_moves_coordinates(chunks):
    out = resample_dataarray(scene(chunks), 2, method="bilinear")
    assert out.dims == ("y", "band", "x") and out.shape == (10, 2, 12)
    assert out.name == "reflectance" and out.attrs == {"units": "1"}
    np.testing.assert_allclose(out.x, 500000.0 + 10 * (np.arange(12) + 0.5))
    np.testing.assert_allclose(out.y, 5800000.0 - 10 * (np.arange(10) + 0.5))
    assert out.spatial_ref.attrs["GeoTransform"].split() == ["500000.0", "10.0", "0.0",
                                                             "5800000.0", "0.0", "-10.0"]
    assert out.spatial_ref.attrs["crs_wkt"] == "EPSG:32633"
    assert list(out.band.values) == ["B11", "B12"] and "row" not in out.coords
    expected = upsample_bilinear(scene().transpose("band", "y", "x").values, 2)
    np.testing.assert_array_equal(out.transpose("band", "y", "x").values, expected)


def test_dataarray_downsampling_moves_coordinates():
    out = resample_dataarray(scene(), 4, method="mean")
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(out.x, 500000.0 + 80 * (np.arange(2) + 0.5))
    np.testing.assert_allclose(out.y, 5800000.0 - 80 * (np.arange(2) + 0.5))
    assert out.spatial_ref.attrs["GeoTransform"].split()[1::4] == ["80.0", "-80.0"]
    assert scene().spatial_ref.attrs["GeoTransform"].split()[1] == "20.0"  # input untouched


# ---------------------------------------------------------------- classes of upsampled proba


def _argmax_of_upsampled(proba: np.ndarray, factor: int, out_shape=None) -> np.ndarray:
    """The reference: upsample every channel, then argmax; NO_CLASS where not finite."""
    smooth = upsample_bilinear(proba, factor, out_shape=out_shape)
    broken = ~np.isfinite(smooth).all(axis=-3)
    index = np.argmax(np.where(broken[..., None, :, :], 0.0, smooth), axis=-3).astype(np.uint8)
    index[broken] = NO_CLASS
    return index


def _weighted(proba: np.ndarray) -> np.ndarray:
    """Probabilities with a NaN hole as the model-grid path stacks them: 0 and a weight."""
    valid = np.isfinite(proba).all(axis=-3, keepdims=True)
    return np.concatenate([np.where(valid, proba, 0.0), valid.astype(np.float32)], axis=-3)


def _normalised_reference(stacked: np.ndarray, factor: int, out_shape=None) -> np.ndarray:
    """Upsample, divide by the upsampled weight, argmax; no class where the nearest source
    pixel has no weight."""
    smooth = upsample_bilinear(stacked, factor, out_shape=out_shape)
    covered = upsample_nearest(stacked[..., -1, :, :] > 0, factor, out_shape=out_shape)
    weight = smooth[..., -1:, :, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        proba = (smooth[..., :-1, :, :] / weight).astype(np.float32)
    empty = ~(covered & (weight[..., 0, :, :] > 0)) | ~np.isfinite(proba).all(axis=-3)
    index = np.argmax(np.where(empty[..., None, :, :], 0.0, proba), axis=-3).astype(np.uint8)
    index[empty] = NO_CLASS
    return index


@pytest.mark.parametrize("factor", [1, 2, 3, 6])
@pytest.mark.parametrize("out_shape", [None, (40, 33)])
def test_argmax_of_upsampled_probabilities(factor, out_shape):
    proba = RNG.random((2, 5, 14, 12), dtype=np.float32)
    proba[0, 2, 3:6, 4:7] = np.nan  # propagates to the footprint: no class there
    proba[1, :, 8:, :] = 0.25  # ties: the first channel, as numpy.argmax
    out_shape = None if out_shape is None or factor < 3 else out_shape
    got = upsample_bilinear_argmax(proba, factor, out_shape=out_shape)
    expected = _argmax_of_upsampled(proba, factor, out_shape)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert (got == NO_CLASS).any()
    assert out_shape is not None or (got[1, -3:] == 0).all()  # the tie's rows


@pytest.mark.parametrize("factor", [2, 3])
def test_argmax_renormalised_over_pixels_with_data(factor):
    proba = RNG.random((4, 20, 17), dtype=np.float32)
    proba[:, 5:9, 2:6] = np.nan
    proba[:, :, -2:] = np.nan
    stacked = _weighted(proba)
    got = upsample_bilinear_argmax(stacked, factor, weighted=True)
    np.testing.assert_array_equal(got, _normalised_reference(stacked, factor))
    nodata = upsample_nearest(~np.isfinite(proba).all(axis=0), factor)
    assert (got[nodata] == NO_CLASS).all() and (got[~nodata] < 4).all()


def test_argmax_of_near_equal_channels():
    """Near-equal channels everywhere: the classes still equal the reference bit for bit."""
    base = RNG.random((1, 30, 30), dtype=np.float32)
    proba = np.concatenate([base, np.nextafter(base, np.float32(2)), base], axis=0)
    np.testing.assert_array_equal(upsample_bilinear_argmax(proba, 3),
                                  _argmax_of_upsampled(proba, 3))


@pytest.mark.parametrize("chunks", [(1, 5, 7, 9), (2, 3, 30, 4), (1, 2, 1, 17)])
@pytest.mark.parametrize("weighted", [False, True])
def test_argmax_dask_equals_whole_array(chunks, weighted):
    proba = RNG.random((2, 4, 30, 34), dtype=np.float32)
    proba[1, :, 10:14, 20:26] = np.nan
    stacked = _weighted(proba) if weighted else proba
    lazy = upsample_bilinear_argmax_dask(da.from_array(stacked, chunks=chunks), 3,
                                         out_shape=(88, 100), weighted=weighted)
    whole = upsample_bilinear_argmax(stacked, 3, out_shape=(88, 100), weighted=weighted)
    assert lazy.shape == whole.shape == (2, 88, 100) and lazy.dtype == np.uint8
    assert lazy.chunks[0] == da.from_array(stacked, chunks=chunks).chunks[0]
    np.testing.assert_array_equal(lazy.compute(), whole)


@pytest.mark.parametrize("shape, weighted", [((5, 5), False), ((1, 5, 5), True),
                                             ((256, 4, 4), False)])
def test_argmax_refuses_what_has_no_class_channels(shape, weighted):
    with pytest.raises(ValueError, match="class channels"):
        upsample_bilinear_argmax(np.zeros(shape, np.float32), 2, weighted=weighted)
    if len(shape) >= 3:
        with pytest.raises(ValueError, match="class channels"):
            upsample_bilinear_argmax_dask(da.zeros(shape, np.float32), 2, weighted=weighted)


# ---------------------------------------------------------------- weighted means


def _weighted_mean_reference(values, rows, row_w, columns, column_w):
    out = np.full((values.shape[0], len(rows), len(columns)), np.nan)
    for b, image in enumerate(values.astype(np.float64)):
        for j in range(len(rows)):
            for k in range(len(columns)):
                weights = np.outer(row_w[j], column_w[k])
                taken = image[np.ix_(rows[j], columns[k])]
                ok = np.isfinite(taken) & (weights > 0)
                if weights[ok].sum() > 1e-9:
                    out[b, j, k] = (weights[ok] * taken[ok]).sum() / weights[ok].sum()
    return out.astype(np.float32)


def test_weighted_mean_matches_the_definition():
    values = RNG.random((2, 9, 11), dtype=np.float32)
    values[0, 2:4, 3:6] = np.nan
    values[1] = np.nan  # nothing finite: NaN everywhere
    rows = np.array([[0, 1], [1, 2], [4, 5], [7, 8]])
    row_w = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0], [0.3, 0.2]])
    columns = np.array([[0, 1, 2], [2, 3, 4], [9, 10, 10]])
    column_w = np.array([[0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    got = weighted_mean(values, rows, row_w, columns, column_w)
    assert got.dtype == np.float32 and got.shape == (2, 4, 3)
    np.testing.assert_allclose(got, _weighted_mean_reference(values, rows, row_w, columns,
                                                             column_w), rtol=1e-6)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()


def test_weighted_mean_refuses_taps_outside_or_unpaired():
    values = np.zeros((4, 4), np.float32)
    taps, weights = np.array([[0, 1]]), np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match="inside"):
        weighted_mean(values, np.array([[3, 4]]), weights, taps, weights)
    with pytest.raises(ValueError, match="pairs"):
        weighted_mean(values, taps, np.array([0.5, 0.5]), taps, weights)

