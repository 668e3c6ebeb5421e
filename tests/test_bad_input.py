"""Bad input: one test per case of docs/bad-input.md.

Each case either raises a typed error from :mod:`xcloud.errors` whose message says what to do
(the test checks the exact class and a key phrase of the advice), or gives a documented
no-data result.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

import xcloud
from tests.test_load import DN, PROVIDERS, localize
from tests.test_radiometry import real_items
from tests.test_search import ITEMS
from xcloud.data.radiometry import asset_radiometry
from xcloud.engine import clear_cache
from xcloud.errors import (
    AssetReadError,
    AssetReadWarning,
    BandError,
    CrsError,
    GridError,
    InputDtypeError,
    InvalidPixelsWarning,
    InvalidReflectanceError,
    MissingBandError,
    MissingWeightsError,
    NoItemsError,
    RadiometryError,
    WeightsError,
    XcloudWarning,
)
from xcloud.models import registry
from xcloud.models.classes import S2CLOUDLESS_SCHEME
from xcloud.models.protocol import BaseCloudModel, ModelInfo
from xcloud.synthetic import synthetic_scene

MODEL = "ukis-6b-l1c"
PROBE = "test-bad-input-probe"
PROBE_HALO = 6  # model (and input) pixels of context; the probe's filter needs 2
PROBE_BANDS = ("B02", "B04")


@contextmanager
def raises_exactly(error: type[Exception], phrase: str) -> Iterator[pytest.ExceptionInfo]:
    """``pytest.raises`` that also insists on the exact class, not a subclass."""
    with pytest.raises(error, match=phrase) as info:
        yield info
    assert type(info.value) is error, f"{type(info.value).__name__} is not {error.__name__}"


class ProbeModel(BaseCloudModel):
    """A pixel model with context: cloud where B02's 5 x 5 maximum exceeds 0.3. Counts calls."""

    calls: ClassVar[list[tuple[int, ...]]] = []

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        ProbeModel.calls.append(batch.shape)
        brightest = ndimage.maximum_filter(batch[:, 0], size=(1, 5, 5), mode="nearest")
        cloud = (brightest > 0.3).astype(np.float32)[:, None]
        return np.concatenate([1 - cloud, cloud], axis=1)


@pytest.fixture
def probe():
    """The probe model registered under :data:`PROBE`; its call log starts empty."""
    info = ModelInfo(PROBE, "1", PROBE_BANDS, 10.0, S2CLOUDLESS_SCHEME, tile_size=None,
                     tile_overlap=0, halo=PROBE_HALO)
    registry.register(registry.ModelEntry(info, lambda **kwargs: ProbeModel(info)),
                      overwrite=True)
    clear_cache()
    ProbeModel.calls.clear()
    yield ProbeModel.calls
    registry._REGISTRY.pop(PROBE, None)
    clear_cache()


@pytest.fixture
def scene() -> xr.Dataset:
    """A generated 96 x 96 px scene (10 m, with CRS)."""
    return synthetic_scene(96, seed=3)


# -- bands and grids ---------------------------------------------------------------------------

def test_missing_band(scene):
    with raises_exactly(MissingBandError, r"lacks band\(s\) B11.*any alias works"):
        scene.drop_vars("B11").cloudmask.predict(model=MODEL)


def test_duplicated_band(scene):
    doubled = scene.assign(blue=scene["B02"])  # B02 twice: by its name and by an alias
    with raises_exactly(BandError, "appears twice.*drop one of them"):
        doubled.cloudmask.predict(model=MODEL)


def test_duplicated_band_label_in_a_dataarray(scene):
    array = scene[["B02", "B03", "B04", "B08", "B11", "B12"]].to_dataarray("band")
    array = array.assign_coords(band=["B02", "B03", "B04", "B08", "B11", "B11"])
    with raises_exactly(BandError, "appears twice.*drop one of them"):
        array.cloudmask.predict(model=MODEL)


def test_bands_on_different_grids(scene):
    coarse = scene["B11"].coarsen(y=2, x=2).mean().rename(y="y20", x="x20")
    mixed = scene.drop_vars("B11").assign(B11=coarse)
    with raises_exactly(GridError, "not on one pixel grid.*bring them to one grid"):
        mixed.cloudmask.predict(model=MODEL)


# -- CRS ---------------------------------------------------------------------------------------

def test_unknown_crs_and_pixel_size_in_predict(scene, probe):
    """No CRS and pixel-index coordinates: predict warns and assumes the model's resolution."""
    bare = scene.drop_vars("spatial_ref").assign_coords(x=np.arange(96), y=np.arange(96))
    with pytest.warns(XcloudWarning, match="Pass resolution="):
        mask = bare.cloudmask.predict(model=PROBE)
    assert mask.shape == (96, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("error", XcloudWarning)  # resolution= silences it
        bare.cloudmask.predict(model=PROBE, resolution=10)


def test_unknown_crs_in_write_item(scene, probe, tmp_path):
    mask = scene.drop_vars("spatial_ref").cloudmask.predict(model=PROBE)
    mask.cloudmask.to_zarr(tmp_path / "mask.zarr")  # a store needs no CRS
    with raises_exactly(CrsError, r"has no CRS.*rio\.write_crs"):
        xcloud.write_item(tmp_path / "mask.zarr")


# -- values ------------------------------------------------------------------------------------

def test_wrong_dtype_integer_digital_numbers(scene):
    digital = scene.map(lambda v: (v * 10000 + 1000).astype(np.uint16))
    with raises_exactly(InputDtypeError, r"not reflectance.*pass scale=0\.0001"):
        digital.cloudmask.predict(model=MODEL)


def test_values_out_of_physical_range(scene, probe):
    unscaled = scene.map(lambda v: v * 10000 + 1000)  # floats, but digital numbers
    with raises_exactly(InvalidReflectanceError, r"digital numbers.*scale=0\.0001"):
        unscaled.cloudmask.predict(model=PROBE)
    assert probe == []


def test_nan_or_inf_in_some_bands_is_nodata_by_default_and_raises_on_request(scene, probe):
    broken = scene.copy(deep=True)
    broken["B02"][5, 5] = np.inf
    broken["B04"][7, 9] = np.nan
    with pytest.warns(InvalidPixelsWarning, match="2 pixels of a chunk have NaN"):
        mask = broken.cloudmask.predict(model=PROBE)
    assert mask.values[5, 5] == mask.values[7, 9] == 255
    assert mask.attrs["xcloud:invalid_pixels"] == 2 and mask.attrs["xcloud:invalid"] == "nodata"
    with raises_exactly(InvalidReflectanceError, "invalid='nodata'"):
        broken.cloudmask.predict(model=PROBE, invalid="raise")


def test_nan_or_inf_in_some_bands_with_invalid_nodata(scene, probe):
    broken = scene.copy(deep=True)
    broken["B02"][5, 5] = np.inf
    broken["B04"][7, 9] = np.nan
    mask = broken.cloudmask.predict(model=PROBE, invalid="nodata").values
    nodata = S2CLOUDLESS_SCHEME.nodata.value
    assert mask[5, 5] == nodata and mask[7, 9] == nodata
    assert (mask == nodata).sum() == 2


# -- chunks ------------------------------------------------------------------------------------

def test_all_nodata_chunks_skip_the_model(scene, probe):
    nodata = S2CLOUDLESS_SCHEME.nodata.value
    empty = scene.map(lambda v: v * np.nan).chunk({"y": 16, "x": 16})
    assert (empty.cloudmask.predict(model=PROBE).values == nodata).all()
    assert probe == []  # not one call
    half = scene.copy(deep=True)
    for name in half.data_vars:
        half[name][:48] = np.nan
    mask = half.chunk({"y": 16, "x": 16}).cloudmask.predict(model=PROBE).values
    assert (mask[:48] == nodata).all() and not (mask[48:] == nodata).any()
    # chunk rows 0 and 1 with their 6 px halo (rows -6..37) hold no valid pixel: 2 x 6 skipped
    assert len(probe) == 6 * 6 - 2 * 6


def test_chunk_smaller_than_the_halo(scene, probe):
    """The engine enlarges chunks to the halo; the mask equals the whole-image mask."""
    whole = scene.cloudmask.predict(model=PROBE)
    tiny = scene.chunk({"y": 4, "x": 4}).cloudmask.predict(model=PROBE)
    assert min(min(c) for c in tiny.data.chunks) >= PROBE_HALO
    assert len(tiny.data.chunks[0]) > 1  # still chunked, not one block
    np.testing.assert_array_equal(tiny.values, whole.values)
    assert 0 < whole.values.mean() < 1  # both classes occur, so the equality says something


# -- STAC items and radiometry -----------------------------------------------------------------

def test_empty_search_result(tmp_path):
    catalogue = tmp_path / "items.json"
    catalogue.write_text(json.dumps({"type": "FeatureCollection", "features": ITEMS}))
    found = xcloud.search(catalogue, bbox=[100.0, -10.0, 101.0, -9.0])
    assert len(found) == 0  # search returns what it found: nothing
    with raises_exactly(NoItemsError, "matched nothing; widen the bbox/datetime"):
        xcloud.load(found, bands=["B04"])


def test_unknown_processing_baseline():
    asset = {"raster:bands": [{"nodata": 0}]}
    with raises_exactly(RadiometryError, "pass assume_baseline=") as info:
        asset_radiometry({}, asset, "B04", item_id="S2X_undated")
    # every assume_baseline= the advice gives works when copied as written
    advised = re.findall(r"assume_baseline=('[^']*')", str(info.value))
    offsets = {ast.literal_eval(value): asset_radiometry(
        {}, asset, "B04", assume_baseline=ast.literal_eval(value)).offset for value in advised}
    assert offsets == {"04.00": pytest.approx(-0.1), "02.14": 0.0}


def test_unreadable_assumed_baseline():
    with raises_exactly(RadiometryError, r"not a processing baseline.*assume_baseline='02\.09'"):
        asset_radiometry({}, {}, "B04", assume_baseline="recent")


def test_offset_already_applied_is_not_applied_twice(tmp_path):
    """Earth Search L2A: boa_offset_applied=true AND raster:bands offset -0.1: offset 0."""
    relative, keys, _ = PROVIDERS[0]
    document = localize(real_items(relative)[0], keys, tmp_path)
    assert document["properties"]["earthsearch:boa_offset_applied"] is True
    assert document["assets"]["red"]["raster:bands"][0]["offset"] == -0.1
    red = xcloud.load([document], bands=["red"], chunks=8)["B04"].values[0]
    assert red[-1, -1] == pytest.approx(DN * 1e-4, abs=1e-6)  # not DN * 1e-4 - 0.1


def _truncated(document: dict, key: str, keep: float) -> dict:
    """``document`` with asset ``key``'s file cut to a fraction ``keep`` of its bytes."""
    path = Path(document["assets"][key]["href"].removeprefix("file://"))
    with path.open("r+b") as handle:
        handle.truncate(int(path.stat().st_size * keep))
    return document


@pytest.mark.parametrize("keep", [0.1, 0.5],
                         ids=["header-cut", "tags-cut"])
def test_corrupt_or_truncated_asset_with_strict(tmp_path, keep):
    relative, keys, _ = PROVIDERS[4]
    document = _truncated(localize(real_items(relative)[0], keys, tmp_path), "B04", keep)
    data = xcloud.load([document], bands=["B04", "B11"], chunks=8, strict=True)
    with raises_exactly(AssetReadError, rf"band B04 of item '{document['id']}'.*fetch it again"):
        data.compute()


def test_corrupt_or_truncated_asset_by_default_is_nodata(tmp_path):
    relative, keys, _ = PROVIDERS[4]
    document = _truncated(localize(real_items(relative)[0], keys, tmp_path), "B04", 0.1)
    data = xcloud.load([document], bands=["B04", "B11"], chunks=8)
    with pytest.warns(AssetReadWarning, match=document["id"]):
        values = data.compute()
    assert np.isnan(values["B04"].values).all()  # the unreadable asset is no data
    assert np.isfinite(values["B11"].values[0, 6:, 6:]).all()  # the other band is read


# -- weights -----------------------------------------------------------------------------------

def test_missing_weights_file(tmp_path):
    with raises_exactly(MissingWeightsError, "does not exist"):
        xcloud.models.get(MODEL).load(weights=tmp_path / "absent.onnx")
    with raises_exactly(MissingWeightsError, "pass weights=PATH"):
        xcloud.models.get("kappamask-l1c").load()


def test_weights_fail_their_checksum(tmp_path):
    """A file named like the published DL-L8S2-UV weights must have their sha256."""
    fake = tmp_path / "landsatbiomeRGBI6.hdf5"
    fake.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1000))
    with raises_exactly(WeightsError, "has sha256 .* download it again"):
        xcloud.models.get("dl-l8s2-uv-rgbi").load(weights=fake)
