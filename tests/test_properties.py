"""Property-based tests (hypothesis) of ``xcloud.predict``: chunking never changes the mask.

Random image sizes, irregular chunk shapes, halos, edge modes, band orders and names, no-data
patterns and time steps; each chunked mask is compared with the whole-image mask of the same
data through the public :func:`xcloud.predict`. The model is a tiny deterministic numpy model
with 32 px tiles whose output depends on where its tiles lie (a stride-2 pooling, blurring
with padding at the tile edge), registered here, so the halo and the scene-wide tile lattice
matter as they do for real networks, at a fraction of their cost.

Bounded and reproducible: ``derandomize=True`` (the same examples on every run, no example
database), 100 examples in all.
"""

from __future__ import annotations

import itertools
import math

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xcloud
from xcloud.errors import XcloudError
from xcloud.models import BaseCloudModel, ModelEntry, ModelInfo, register, unregister
from xcloud.models.classes import S2CLOUDLESS_SCHEME
from xcloud.synthetic import synthetic_scene

TILE = 32


def _probe_info(resolution: float) -> ModelInfo:
    return ModelInfo(
        name=f"xcloud-test-lattice-probe-{resolution:g}m",
        version="1",
        bands=("B02", "B03", "B04", "B08"),
        resolution=resolution,
        scheme=S2CLOUDLESS_SCHEME,
        tile_size=TILE,
        tile_overlap=8,
        licence="MIT",
        description="test model: brightness pooled on a stride-2 grid, blurred in the tile",
    )


# at the input's 10 m, and at 20 m and 30 m (the engine resamples the input for them and back)
PROBES = {resolution: _probe_info(resolution) for resolution in (10.0, 20.0, 30.0)}
PROBE_INFO = PROBES[10.0]
# every spelling predict accepts for the probe's bands (canonical, Earth Search, other)
ALIASES = {"B02": ("B02", "blue"), "B03": ("B03", "green"), "B04": ("B04", "red"),
           "B08": ("B08", "nir")}
EXTRA_BANDS = ("B11", "B12")  # not used by the model: must be ignored wherever they are
SETTINGS = {"deadline": None, "derandomize": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


def _pool2(image: np.ndarray) -> np.ndarray:
    """2 x 2 block means on the even grid of the tile, repeated back to full size."""
    height, width = image.shape[1:]
    padded = np.pad(image, ((0, 0), (0, height % 2), (0, width % 2)), mode="edge")
    blocks = (padded[:, 0::2, 0::2] + padded[:, 1::2, 0::2] + padded[:, 0::2, 1::2]
              + padded[:, 1::2, 1::2]) * np.float32(0.25)
    return np.repeat(np.repeat(blocks, 2, axis=1), 2, axis=2)[:, :height, :width]


def _blur3(image: np.ndarray) -> np.ndarray:
    """3 x 3 box mean with edge padding at the tile border."""
    height, width = image.shape[1:]
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)), mode="edge")
    total = np.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            total = total + padded[:, dy:dy + height, dx:dx + width]
    return total * np.float32(1 / 9)


class LatticeProbe(BaseCloudModel):
    """Not shift invariant, deterministic per tile (elementwise numpy, no batch effects)."""

    def __init__(self, info: ModelInfo = PROBE_INFO) -> None:
        self.info = info

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        bright = (batch[:, 0] + batch[:, 1] + batch[:, 2] + batch[:, 3]) * np.float32(0.25)
        feature = _blur3(_pool2(bright)) + np.float32(0.5) * (bright - _blur3(bright))
        cloud = np.clip((feature - np.float32(0.2)) * np.float32(6) + np.float32(0.5), 0, 1)
        return np.stack([1 - cloud, cloud], axis=1).astype(np.float32)


def _loader(info: ModelInfo):
    def load_probe(*, weights=None, device="cpu", runtime="auto") -> LatticeProbe:
        return LatticeProbe(info)

    return load_probe


@pytest.fixture(scope="module", autouse=True)
def _probes():
    """The probe models, registered for this module's tests only."""
    for info in PROBES.values():
        register(ModelEntry(info, _loader(info)), overwrite=True)
    yield
    for info in PROBES.values():
        unregister(info.name)


# -- strategies -----------------------------------------------------------------------------


@st.composite
def splits(draw, size: int) -> tuple[int, ...]:
    """Irregular Dask chunk sizes along an axis of ``size`` pixels (1 to 5 chunks)."""
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=4)) if size > 1 else ())
    edges = [0, *cuts, size]
    return tuple(b - a for a, b in itertools.pairwise(edges))


@st.composite
def scenes(draw) -> dict:
    """Data, chunks and options of one example (the arrays are in memory)."""
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**16))
    scene = synthetic_scene(max(height, width), seed=seed, cloud_cover=0.4)
    scene = scene.isel(y=slice(0, height), x=slice(0, width))
    times = draw(st.sampled_from((0, 2)))
    names = {band: draw(st.sampled_from(ALIASES[band])) for band in ALIASES}
    order = draw(st.permutations([*ALIASES, *EXTRA_BANDS]))
    variables = {names.get(band, band): scene[band] for band in order}
    if times:
        variables = {name: xr.concat([v, v[::-1, ::-1].assign_coords(y=v.y, x=v.x) * 0.9],
                                     dim="time").assign_coords(time=[0, 1])
                     for name, v in variables.items()}
    data = xr.Dataset(variables)
    nodata = draw(st.sampled_from((None, 0.0)))
    return {"data": _with_gaps(draw, data, nodata), "nodata": nodata,
            "chunks": {"y": draw(splits(height)), "x": draw(splits(width))},
            "boundary": draw(st.sampled_from(("reflect", "nearest", "periodic", "none"))),
            "model": draw(st.sampled_from(sorted(PROBES)))}


def _with_gaps(draw, data: xr.Dataset, nodata: float | None) -> xr.Dataset:
    """Rectangles with no data in every band (NaN or ``nodata``), and NaN in some bands."""
    height, width = data.sizes["y"], data.sizes["x"]
    arrays = {name: data[name].values.copy() for name in data.data_vars}
    for _ in range(draw(st.integers(0, 3))):
        y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        rows, cols = slice(y0, y0 + draw(st.integers(1, 40))), slice(x0, x0 + draw(
            st.integers(1, 40)))
        value = np.nan if nodata is None else nodata
        for array in arrays.values():
            array[..., rows, cols] = value
    if draw(st.booleans()):  # a few pixels with NaN in one band only
        name = draw(st.sampled_from(sorted(arrays)))
        y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        arrays[name][..., y0, x0] = np.nan
    return data.copy(data={name: arrays[name] for name in data.data_vars})


def _chunked(data: xr.Dataset, chunks: dict) -> xr.Dataset:
    return data.map(lambda v: v.copy(data=da.from_array(
        v.values, chunks=(*((1,) * (v.ndim - 2)), chunks["y"], chunks["x"]))))


def _predict(data: xr.Dataset | xr.DataArray, *, model: float = 10.0,
             **options) -> np.ndarray | type[Exception]:
    """The mask's values, or the type of the documented error predict raised.

    Any other exception fails the test: predict may raise xcloud's errors and ValueError only.
    """
    try:
        with dask.config.set(scheduler="threads", num_workers=2):
            mask = xcloud.predict(data, model=PROBES[model].name, **options)
            return np.asarray(mask.values)
    except (XcloudError, ValueError) as error:  # documented: xcloud's errors, bad arguments
        return type(error)


def _missing(data: xr.Dataset, nodata: float | None, *, partial: bool) -> np.ndarray:
    """Pixels with no data in the model's bands (all of them, or any with ``partial``)."""
    spellings = {name for names in ALIASES.values() for name in names}
    stack = np.stack([data[name].values for name in data.data_vars if name in spellings])
    empty = np.isnan(stack) if nodata is None else np.isnan(stack) | (stack == nodata)
    return empty.any(axis=0) if partial else empty.all(axis=0)


def _seams(sizes: tuple[int, ...], total: int, reach: int) -> np.ndarray:
    """Pixels within ``reach`` of an inner chunk boundary along one axis."""
    near = np.zeros(total, bool)
    for edge in np.cumsum(sizes)[:-1]:
        near[max(0, edge - reach):edge + reach] = True
    return near


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=40, **SETTINGS)
@given(example=scenes(), invalid=st.sampled_from(("raise", "nodata")))
def test_chunked_equals_whole_image_with_the_default_halo(example, invalid):
    options = {"nodata": example["nodata"], "boundary": example["boundary"],
               "invalid": invalid, "model": example["model"]}
    whole = _predict(example["data"], **options)
    chunked = _predict(_chunked(example["data"], example["chunks"]), **options)
    if isinstance(whole, type) or isinstance(chunked, type):
        assert chunked == whole  # the same documented error, or none
        return
    np.testing.assert_array_equal(chunked, whole)
    missing = _missing(example["data"], example["nodata"], partial=invalid == "nodata")
    assert (whole[missing] == PROBE_INFO.scheme.nodata.value).all()  # never "clear"


@settings(max_examples=40, **SETTINGS)
@given(example=scenes(), halo=st.integers(0, TILE + 1))
def test_a_smaller_halo_changes_pixels_near_chunk_seams_only(example, halo):
    """Tolerance with ``halo`` below the default (tile + 2): pixels farther than one tile
    (+ 2 model pixels, + 2 input pixels of resampling) from every inner chunk boundary equal
    the whole-image mask; nearer ones may not.
    """
    options = {"nodata": example["nodata"], "boundary": example["boundary"], "halo": halo,
               "invalid": "nodata", "model": example["model"]}
    whole = _predict(example["data"], **options)
    chunked = _predict(_chunked(example["data"], example["chunks"]), **options)
    assert not isinstance(whole, type) and not isinstance(chunked, type)
    reach = math.ceil((TILE + 2) * example["model"] / 10) + 2  # tile + 2 (+ resampling)
    height, width = whole.shape[-2:]
    near = (_seams(example["chunks"]["y"], height, reach)[:, None]
            | _seams(example["chunks"]["x"], width, reach)[None, :])
    np.testing.assert_array_equal(chunked[..., ~near], whole[..., ~near])


@settings(max_examples=20, **SETTINGS)
@given(example=scenes())
def test_band_order_and_layout_do_not_matter(example):
    data = example["data"]
    options = {"nodata": example["nodata"], "invalid": "nodata", "model": example["model"]}
    reference = _predict(data, **options)
    reversed_order = xr.Dataset({n: data[n] for n in reversed(list(data.data_vars))})
    stacked = data.to_dataarray("band")  # a DataArray with a band dimension, same order
    for other in (reversed_order, stacked):  # whole images: chunking is the test above
        np.testing.assert_array_equal(_predict(other, **options), reference)


def test_the_probe_depends_on_the_tile_lattice():
    """The probe is not shift invariant: moving its input by 1 px changes its output."""
    image = synthetic_scene(TILE, seed=5)[["B02", "B03", "B04", "B08"]].to_dataarray().values
    model = LatticeProbe()
    proba = model.predict_proba(image[None])[0, 1]
    shifted = model.predict_proba(np.roll(image, 1, axis=-1)[None])[0, 1]
    assert not np.allclose(np.roll(proba, 1, axis=-1)[:, 2:-2], shifted[:, 2:-2])


@pytest.mark.parametrize("halo", [-1])
def test_bad_arguments_are_value_errors(halo):
    with pytest.raises(ValueError, match="halo"):
        xcloud.predict(synthetic_scene(16), model=PROBE_INFO.name, halo=halo)
