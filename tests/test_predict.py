"""The engine end to end: laziness, coordinates, no-data, errors, seams, time series."""

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import xcloud
from xcloud.errors import (
    InputDtypeError,
    InvalidReflectanceError,
    MissingBandError,
    UnknownModelError,
)

MODEL = "ukis-6b-l1c"


class ComputeCounter:
    """Counts how often the input's chunks are computed."""

    def __init__(self):
        self.calls = 0

    def __call__(self, block):
        self.calls += block.size > 0  # dask probes with empty arrays for the meta
        return block


def lazy_scene(scene, counter, chunk=96):
    def lazy(variable):
        data = da.from_array(variable.values, chunks=chunk).map_blocks(counter, dtype=np.float32)
        return variable.copy(data=data)

    return scene.map(lazy)


def test_building_predict_computes_nothing(scene):
    counter = ComputeCounter()
    mask = lazy_scene(scene, counter).cloudmask.predict(model=MODEL)
    assert isinstance(mask.data, da.Array) and counter.calls == 0
    assert mask.dtype == np.uint8
    with dask.config.set(scheduler="synchronous"):
        mask.compute()
    assert counter.calls > 0


def test_coordinates_crs_and_cf_attributes_survive(scene):
    mask = scene.cloudmask.predict(model=MODEL)
    assert mask.dims == ("y", "x")
    np.testing.assert_array_equal(mask["x"], scene["x"])
    np.testing.assert_array_equal(mask["y"], scene["y"])
    assert "spatial_ref" in mask.coords
    assert mask.rio.crs == scene.rio.crs
    assert mask.rio.transform() == scene.rio.transform()
    assert mask.attrs["flag_values"] == [0, 1, 2, 255]
    assert mask.attrs["flag_meanings"] == "clear cloud cloud_shadow no_data"
    assert len(mask.attrs["flag_colors"].split()) == 4
    assert set(np.unique(mask.values)) <= {0, 1, 2}


def test_probabilities_sum_to_one(scene):
    proba = scene.cloudmask.predict(model=MODEL, output="proba")
    assert proba.dims == ("class", "y", "x") and proba.dtype == np.float32
    assert list(proba["class"].values) == ["clear", "cloud", "cloud_shadow"]
    np.testing.assert_allclose(proba.sum("class"), 1, atol=1e-4)


def test_nodata_pixels_get_the_nodata_class(scene):
    scene = scene.copy(deep=True)
    for name in scene.data_vars:
        scene[name][:40, :] = np.nan
        scene[name][100:, 150:] = 0.0
    mask = scene.chunk({"y": 64, "x": 64}).cloudmask.predict(model=MODEL, nodata=0.0).compute()
    assert (mask.values[:40] == 255).all()
    assert (mask.values[100:, 150:] == 255).all()
    assert not (mask.values[40:100] == 255).any()
    proba = scene.cloudmask.predict(model=MODEL, output="proba", nodata=0.0)
    assert np.isnan(proba.values[:, :40]).all()


def test_all_nodata_chunks_skip_the_model(scene):
    empty = scene.copy(deep=True).map(lambda v: v * np.nan)
    xcloud.engine.clear_cache()
    mask = empty.cloudmask.predict(model=MODEL)
    assert (mask.values == 255).all()
    assert xcloud.load_counts() == {}


def test_time_series_and_dataarray_input(scene):
    flipped = scene.map(lambda v: v.copy(data=v.values[:, ::-1]))
    series = xr.concat([scene, flipped], dim="time")
    series = series.assign_coords(time=np.array(["2024-01-01", "2024-01-06"], "datetime64[ns]"))
    mask = series.chunk({"time": 1, "y": 96, "x": 96}).cloudmask.predict(model=MODEL)
    assert mask.dims == ("time", "y", "x")
    np.testing.assert_array_equal(mask["time"], series["time"])
    single = series.isel(time=0).to_dataarray("band").cloudmask.predict(model=MODEL)
    np.testing.assert_array_equal(single.values, mask.isel(time=0).values)


def test_chunks_smaller_than_the_halo_work(scene):
    whole = scene.cloudmask.predict(model=MODEL)
    tiny = scene.chunk({"y": 16, "x": 16}).cloudmask.predict(model=MODEL, halo=40)
    assert tiny.shape == whole.shape
    assert (tiny.values == whole.values).mean() > 0.95


def test_missing_band_error_names_it(scene):
    with pytest.raises(MissingBandError, match="B11") as info:
        scene.drop_vars("B11").cloudmask.predict(model=MODEL)
    assert "B02, B03, B04, B08, B11, B12" in str(info.value)


def test_integer_input_needs_scale(scene):
    digital = scene.map(lambda v: (v * 10000 + 1000).astype(np.uint16))
    with pytest.raises(InputDtypeError, match="scale"):
        digital.cloudmask.predict(model=MODEL)
    scaled = digital.cloudmask.predict(model=MODEL, scale=1e-4, offset=-0.1)
    reference = scene.cloudmask.predict(model=MODEL)
    assert (scaled.values == reference.values).mean() > 0.99


def test_unscaled_floats_are_refused(scene):
    with pytest.raises(InvalidReflectanceError, match="digital numbers"):
        scene.map(lambda v: v * 10000).cloudmask.predict(model=MODEL)


def test_nan_or_inf_in_some_bands(scene):
    broken = scene.copy(deep=True)
    broken["B04"][5, 5] = np.inf
    broken["B11"][7, 9] = np.nan
    with pytest.raises(InvalidReflectanceError, match="invalid='nodata'"):
        broken.cloudmask.predict(model=MODEL, invalid="raise")
    mask = broken.cloudmask.predict(model=MODEL)
    assert mask.values[5, 5] == 255 and mask.values[7, 9] == 255


def test_unknown_model_suggests_names(scene):
    with pytest.raises(UnknownModelError, match="ukis-6b-l1c"):
        scene.cloudmask.predict(model="ukis-6b-llc")


@pytest.fixture(scope="module")
def large_patch(patch_array):
    """The real labelled patch mirrored to 1024 x 1024 px."""
    values = patch_array.values
    wide = np.concatenate([values, values[:, :, ::-1]], axis=2)
    tall = np.concatenate([wide, wide[:, ::-1]], axis=1)
    return xr.DataArray(tall, dims=("band", "y", "x"), coords={"band": patch_array["band"]})


def border_mask(size, chunk, width):
    border = np.zeros((size, size), bool)
    for edge in range(chunk, size, chunk):
        border[edge - width:edge + width] = True
        border[:, edge - width:edge + width] = True
    return border


def test_seam_free_with_the_default_halo(large_patch):
    whole = large_patch.cloudmask.predict(model=MODEL, resolution=30, chunk_size=1024).values
    chunked = large_patch.chunk({"y": 256, "x": 256}).cloudmask.predict(
        model=MODEL, resolution=30
    ).values
    no_halo = large_patch.chunk({"y": 256, "x": 256}).cloudmask.predict(
        model=MODEL, resolution=30, halo=0
    ).values
    agree, agree_no_halo = (chunked == whole).mean(), (no_halo == whole).mean()
    assert agree >= 0.999
    assert 1 - agree_no_halo > 2 * (1 - agree)
    # without a halo the disagreement sits on chunk borders
    border = border_mask(1024, 256, 32)
    wrong = no_halo != whole
    assert wrong[border].mean() > 3 * wrong[~border].mean()


@pytest.mark.parametrize("halo", [0, 5])
def test_blocks_that_are_not_whole_model_pixels(halo):
    """100 px chunks at ukis' 30 m: 33.3 model pixels per block (rounded down to 33)."""
    from xcloud.synthetic import synthetic_scene

    scene = synthetic_scene(200, seed=2).chunk({"y": 100, "x": 100})
    mask = scene.cloudmask.predict(model=MODEL, halo=halo).compute()
    assert mask.shape == (200, 200)
    assert set(np.unique(mask.values)) <= {0, 1, 2}


def _small_kappamask(path, seed=1):
    import torch

    from xcloud.models.kappamask import (
        KAPPAMASK_L1C_BANDS,
        KappaMaskUNet,
        default_range,
        save_checkpoint,
    )

    torch.manual_seed(seed)  # random weights: no published file needed
    network = KappaMaskUNet(13, depth=3, filters=8, head_channels=0)
    with torch.no_grad():  # a decisive head, as a trained one: random heads are near ties
        network.classifier.weight.mul_(4.0)
        network.classifier.bias.mul_(4.0)
    save_checkpoint(path, network, bands=KAPPAMASK_L1C_BANDS, minimum=[0.0] * 13,
                    maximum=default_range("L1C")[1], level="L1C")
    return path


def test_precision_reaches_the_model(scene, tmp_path):
    """bfloat16 changes the probabilities a little and the classes hardly at all."""
    weights = _small_kappamask(tmp_path / "km.pt")
    runs = {precision: {output: xcloud.predict(scene, model="kappamask-l1c", weights=weights,
                                               device="cpu", precision=precision,
                                               output=output).values
                        for output in ("proba", "class")}
            for precision in ("float32", "bfloat16")}
    full, reduced = runs["float32"], runs["bfloat16"]
    assert reduced["proba"].dtype == np.float32
    difference = float(np.nanmax(np.abs(reduced["proba"] - full["proba"])))
    assert 0 < difference < 0.05, difference  # measured 0.008
    assert sorted(np.unique(full["class"], return_counts=True)[1])[-2] > 0.05 * full["class"].size
    assert (reduced["class"] == full["class"]).mean() >= 0.95  # measured 0.992


@pytest.mark.parametrize(("model", "precision", "message"), [
    ("kappamask-l1c", "float16", "needs a CUDA device"),
    ("kappamask-l1c", "double", "precision must be one of"),
    (MODEL, "bfloat16", "ONNX graph runs as shipped"),
])
def test_a_precision_the_model_cannot_run_is_refused_at_the_call(scene, model, precision,
                                                                 message):
    lazy = scene.chunk({"y": 96, "x": 96})
    with pytest.raises(ValueError, match=message) as raised:
        xcloud.predict(lazy, model=model, device="cpu", precision=precision)
    assert "precision" in str(raised.value)
