"""Keras 2 HDF5 weights and full-model files read with h5py alone, layers paired by order."""

import json
import shutil

import numpy as np
import pytest

from tests.conftest import need_data
from xcloud.errors import MissingWeightsError, WeightsError
from xcloud.models.keras_hdf5 import (
    KerasLayer,
    KerasWeights,
    is_keras_hdf5,
    read_keras_weights,
)

h5py = pytest.importorskip("h5py")

FIXTURES = "fixtures/kappamask_keras"


def _strings(values):
    return np.array([v.encode() for v in values], dtype="S")


def write_keras_file(path, layers, *, full_model=False, model_config=None, version="2.4.0",
                     prefix=""):
    """Write ``layers`` ([(group, [(weight, array), ...]), ...]) as Keras 2 does.

    Weight datasets sit at ``<group>/<weight name>`` (the name's '/' makes sub-groups), the
    names may carry a scope ``prefix``; ``full_model`` puts them under /model_weights.
    """
    with h5py.File(path, "w") as handle:
        if full_model:
            handle.attrs["model_config"] = json.dumps(
                model_config if model_config is not None else {"class_name": "Functional"})
            handle.attrs["keras_version"] = version
            handle.attrs["backend"] = "tensorflow"
            group = handle.create_group("model_weights")
        else:
            group = handle
        group.attrs["layer_names"] = _strings([name for name, _ in layers])
        group.attrs["backend"] = "tensorflow"
        group.attrs["keras_version"] = version
        for name, weights in layers:
            layer = group.create_group(name)
            names = [f"{prefix}{name}/{weight}:0" for weight, _ in weights]
            layer.attrs["weight_names"] = _strings(names)
            for full, (_, array) in zip(names, weights, strict=True):
                layer.create_dataset(full, data=array)
    return path


def small_layers(seed=0):
    """conv (3x3, 2 -> 4), a weightless layer, batch norm, conv (1x1, 4 -> 3); group names
    that sort differently from their order in layer_names."""
    rng = np.random.default_rng(seed)

    def array(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return [
        ("input_1", []),
        ("conv2d_7", [("kernel", array(3, 3, 2, 4)), ("bias", array(4))]),
        ("max_pooling2d", []),
        ("batch_normalization", [(w, array(4)) for w in ("gamma", "beta", "moving_mean",
                                                          "moving_variance")]),
        ("conv2d_2", [("kernel", array(1, 1, 4, 3)), ("bias", array(3))]),
    ]


def assert_read_back(weights, layers, prefix=""):
    weighted = [(name, ws) for name, ws in layers if ws]
    assert isinstance(weights, KerasWeights)
    assert [layer.name for layer in weights.layers] == [name for name, _ in weighted]
    for layer, (name, ws) in zip(weights.layers, weighted, strict=True):
        assert isinstance(layer, KerasLayer)
        assert layer.weight_names == tuple(f"{prefix}{name}/{w}:0" for w, _ in ws)
        assert layer.short_names == tuple(w for w, _ in ws)
        for got, (_, expected) in zip(layer.arrays, ws, strict=True):
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("full_model", [False, True], ids=["weights-file", "full-model"])
@pytest.mark.parametrize("prefix", ["", "Model/"])
def test_both_layouts_read_weighted_layers_in_file_order(tmp_path, full_model, prefix):
    layers = small_layers()
    path = write_keras_file(tmp_path / "m.hdf5", layers, full_model=full_model, prefix=prefix,
                            model_config={"class_name": "Functional", "config": {"layers": []}})
    weights = read_keras_weights(path)
    assert_read_back(weights, layers, prefix)
    assert weights.layers[0].shapes == ((3, 3, 2, 4), (4,))  # Keras layout, as stored
    assert (weights.keras_version, weights.backend) == ("2.4.0", "tensorflow")
    if full_model:
        assert weights.model_config == {"class_name": "Functional", "config": {"layers": []}}
    else:
        assert weights.model_config is None
    assert weights.n_values == 3 * 3 * 2 * 4 + 4 + 16 + 4 * 3 + 3


def test_order_is_that_of_layer_names_not_of_the_groups(tmp_path):
    layers = small_layers()
    swapped = [layers[4], layers[0], layers[3], layers[1]]  # conv2d_2 first
    weights = read_keras_weights(write_keras_file(tmp_path / "m.h5", swapped))
    assert [layer.name for layer in weights.layers] == ["conv2d_2", "batch_normalization",
                                                        "conv2d_7"]


def test_signature_check_needs_no_h5py(tmp_path):
    path = write_keras_file(tmp_path / "m.hdf5", small_layers())
    assert is_keras_hdf5(path)
    (tmp_path / "text.hdf5").write_text("not HDF5 at all")
    assert not is_keras_hdf5(tmp_path / "text.hdf5")
    assert not is_keras_hdf5(tmp_path / "absent.hdf5")
    (tmp_path / "empty.h5").write_bytes(b"")
    assert not is_keras_hdf5(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "block.h5", "w", userblock_size=512) as handle:
        handle.attrs["layer_names"] = _strings([])
    assert is_keras_hdf5(tmp_path / "block.h5")  # signature after a user block
    assert read_keras_weights(tmp_path / "block.h5").layers == ()


def test_files_that_are_not_keras_weights_are_refused(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        read_keras_weights(tmp_path / "absent.hdf5")
    (tmp_path / "text.hdf5").write_text("not HDF5 at all")
    with pytest.raises(WeightsError, match=r"not an HDF5 file.*save_weights"):
        read_keras_weights(tmp_path / "text.hdf5")
    with h5py.File(tmp_path / "data.h5", "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match=r"no 'layer_names'.*save_weights"):
        read_keras_weights(tmp_path / "data.h5")


def test_model_config_must_be_a_json_object(tmp_path):
    path = write_keras_file(tmp_path / "m.h5", small_layers(), full_model=True,
                            model_config=[1, 2])
    with pytest.raises(WeightsError, match="model_config is a JSON list, not an object"):
        read_keras_weights(path)
    with h5py.File(path, "a") as handle:
        handle.attrs["model_config"] = "{not json"
    with pytest.raises(WeightsError, match="model_config is not JSON"):
        read_keras_weights(path)


def test_missing_groups_and_datasets_are_named(tmp_path):
    path = write_keras_file(tmp_path / "m.h5", small_layers())
    with h5py.File(path, "a") as handle:
        del handle["conv2d_2/conv2d_2/bias:0"]
    with pytest.raises(WeightsError, match=r"'conv2d_2' names weights \['conv2d_2/bias:0'\]"):
        read_keras_weights(path)
    path = write_keras_file(tmp_path / "n.h5", small_layers())
    with h5py.File(path, "a") as handle:
        del handle["conv2d_7"]
    with pytest.raises(WeightsError, match="layer 'conv2d_7' in layer_names but has no group"):
        read_keras_weights(path)


def test_truncated_file(tmp_path):
    source = need_data(f"{FIXTURES}/l1c_unet.hdf5")
    data = source.read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[: len(data) // 2])
    assert is_keras_hdf5(tmp_path / "cut.hdf5")
    with pytest.raises(WeightsError, match=r"truncated or damaged.*download it again"):
        read_keras_weights(tmp_path / "cut.hdf5")


@pytest.mark.parametrize("level", ["l1c", "l2a"])
def test_fixture_weights_files(level, tmp_path):
    meta = json.loads(need_data(f"{FIXTURES}/meta.json").read_text())
    network = meta["networks"][level]
    path = need_data(f"{FIXTURES}/{network['weights_file']}")
    weights = read_keras_weights(path)
    assert weights.keras_version == "2.21.0" and weights.backend == "tensorflow"
    assert weights.model_config is None
    assert len(weights.layers) == 24 and weights.n_values == network["n_params_fixture"]
    listed = network["fixture_vs_full_size_weight_shapes"]
    got = [(name, array.shape) for layer in weights.layers
           for name, array in zip(layer.weight_names, layer.arrays, strict=True)]
    assert got == [(w["weight"], tuple(w["fixture_shape"])) for w in listed]
    # the same arrays in a full-model file (weights under /model_weights) read the same
    copy = shutil.copy(path, tmp_path / "full.hdf5")
    with h5py.File(copy, "a") as handle:
        group = handle.create_group("model_weights")
        for key, value in handle.attrs.items():
            group.attrs[key] = value
        for name in list(handle):
            if name != "model_weights":
                handle.move(name, f"model_weights/{name}")
        del handle.attrs["layer_names"]
        handle.attrs["model_config"] = json.dumps({"class_name": "Functional"})
    full = read_keras_weights(copy)
    assert full.model_config == {"class_name": "Functional"}
    for a, b in zip(full.layers, weights.layers, strict=True):
        assert a.weight_names == b.weight_names
        assert all(np.array_equal(x, y) for x, y in zip(a.arrays, b.arrays, strict=True))
