"""KappaMask's released Keras DeepLabv3+ in torch, against the Keras reference fixture.

The full-size L1C weights file (98 MB, seeded random values) is generated from its layout
with the shared script, loaded by order and run on the fixture input; the probabilities are
compared with what the authors' Keras graph computed with the same file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xcloud.errors import WeightsError
from xcloud.models.kappamask_deeplab import (
    MIN_TILE,
    N_WEIGHTED_LAYERS,
    TILE_MULTIPLE,
    KappaMaskDeepLabV3Plus,
    symmetric_pad,
)

from .conftest import data_dir, need_data

pytest.importorskip("h5py")
from xcloud.models.keras_hdf5 import KerasLayer, read_keras_weights

FIXTURES = "fixtures/kappamask_keras"
L1C_PARAMETERS = 24_601_390  # Keras count_params, BatchNorm moving statistics included
L2A_EXTRA = 3 * 3 * 1 * 32  # the first kernel's 14th input channel


def _json(name: str) -> dict[str, Any]:
    return json.loads(need_data(f"{FIXTURES}/{name}").read_text())


def _layout_layers(layout: dict[str, Any]) -> list[KerasLayer]:
    """KerasLayers with a layout's names and shapes; zero arrays as views (no memory)."""
    return [KerasLayer(layer["layer"], tuple(w["name"] for w in layer["weights"]),
                       tuple(np.broadcast_to(np.float32(0), tuple(w["shape"]))
                             for w in layer["weights"]))
            for layer in layout["layers"] if layer["weights"]]


@pytest.fixture(scope="module")
def deeplab_layers(tmp_path_factory: pytest.TempPathFactory) -> tuple[KerasLayer, ...]:
    """The generated full-size L1C weights file (seed 1234), read by H1's reader."""
    layout = need_data(f"{FIXTURES}/layout_l1c_deeplabv3plus_full.json")
    script = data_dir().parent / "tools" / "make_kappamask_hdf5.py"
    if not script.is_file():
        pytest.skip(f"generator script {script} not found")
    recipe = _json("meta.json")["deeplabv3plus_fixture"]
    seed = recipe["generator"]["seed"]
    out = tmp_path_factory.mktemp("kappamask_deeplab") / "l1c_deeplabv3plus.hdf5"
    subprocess.run([sys.executable, str(script), str(layout), str(seed), str(out)], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    layers = read_keras_weights(out).layers
    digest = hashlib.sha256()
    for layer in layers:
        for array in layer.arrays:
            digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    assert digest.hexdigest() == recipe["generated_file"]["arrays_sha256"]
    return layers


@pytest.fixture(scope="module")
def l1c_net(deeplab_layers: tuple[KerasLayer, ...]) -> KappaMaskDeepLabV3Plus:
    net = KappaMaskDeepLabV3Plus(13).eval()
    net.load_keras_layers(deeplab_layers)
    return net


def test_matches_keras_reference(l1c_net: KappaMaskDeepLabV3Plus) -> None:
    with np.load(need_data(f"{FIXTURES}/deeplab_l1c_io.npz")) as io:
        x, prob, classes = io["x"], io["prob"], io["classes"]
    torch.set_num_threads(1)
    with torch.no_grad():
        out = l1c_net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    ours = out.numpy().transpose(0, 2, 3, 1)
    assert ours.shape == prob.shape == (1, 288, 288, 6)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, prob, atol=1e-3, rtol=0)
    assert (ours.argmax(-1) == classes).mean() >= 0.999


def test_layout_maps_weight_by_weight() -> None:
    layout = _json("layout_l1c_deeplabv3plus_full.json")
    file_shapes = [tuple(w["shape"]) for layer in layout["layers"] for w in layer["weights"]]
    net = KappaMaskDeepLabV3Plus(13)
    assert net.keras_weight_shapes() == file_shapes
    assert len(file_shapes) == layout["n_weight_arrays"] == 265
    assert layout["n_layers_with_weights"] == N_WEIGHTED_LAYERS
    assert sum(int(np.prod(s)) for s in file_shapes) == layout["n_values"] == L1C_PARAMETERS
    # torch: parameters plus the BatchNorm moving statistics (buffers) = the Keras count
    moving = sum(b.numel() for n, b in net.named_buffers() if n.endswith(("mean", "var")))
    assert sum(p.numel() for p in net.parameters()) + moving == L1C_PARAMETERS


def test_l2a_network_adds_the_first_kernels_channel() -> None:
    net = KappaMaskDeepLabV3Plus(14)
    shapes = net.keras_weight_shapes()
    assert shapes[0] == (3, 3, 14, 32)
    assert sum(int(np.prod(s)) for s in shapes) == L1C_PARAMETERS + L2A_EXTRA == 24_601_678


def test_looks_like() -> None:
    assert KappaMaskDeepLabV3Plus.looks_like(
        _layout_layers(_json("layout_l1c_deeplabv3plus_full.json")))
    assert not KappaMaskDeepLabV3Plus.looks_like(
        _layout_layers(_json("layout_l1c_unet_full.json")))
    unet = read_keras_weights(need_data(f"{FIXTURES}/l1c_unet.hdf5")).layers
    assert not KappaMaskDeepLabV3Plus.looks_like(unet)


def test_unet_file_is_refused() -> None:
    net = KappaMaskDeepLabV3Plus(13)
    for layers in (_layout_layers(_json("layout_l1c_unet_full.json")),
                   read_keras_weights(need_data(f"{FIXTURES}/l1c_unet.hdf5")).layers):
        with pytest.raises(WeightsError, match=r"weights=.*24 layers with weights, the network 93 "
                                               r"\(first difference: .*layer 0 'conv2d'"):
            net.load_keras_layers(layers)


def test_one_changed_shape_is_refused_and_nothing_is_loaded() -> None:
    layers = _layout_layers(_json("layout_l1c_deeplabv3plus_full.json"))
    index = next(i for i, layer in enumerate(layers) if layer.name == "conv2d_9")
    bad = layers[index]
    layers[index] = KerasLayer(bad.name, bad.weight_names,
                               (np.broadcast_to(np.float32(0), (3, 3, 1024, 255)),))
    net = KappaMaskDeepLabV3Plus(13)
    before = net.classifier.weight.detach().clone()
    first = net.stem1.conv.weight.detach().clone()
    with pytest.raises(WeightsError, match=rf"layer {index} 'conv2d_9' weight "
                                           r"'conv2d_9/kernel:0' has shape \(3, 3, 1024, 255\), "
                                           r"expected \(3, 3, 1024, 256\)"):
        net.load_keras_layers(layers)
    assert torch.equal(net.classifier.weight, before)
    assert torch.equal(net.stem1.conv.weight, first)  # earlier layers not loaded either


def test_missing_bias_is_refused() -> None:
    layers = _layout_layers(_json("layout_l1c_deeplabv3plus_full.json"))
    last = layers[-1]
    layers[-1] = KerasLayer(last.name, last.weight_names[:1], last.arrays[:1])
    with pytest.raises(WeightsError, match=r"layer 92 'conv2d_15' has 1 arrays"):
        KappaMaskDeepLabV3Plus(13).load_keras_layers(layers)


def test_wrong_band_count_is_refused() -> None:
    layers = _layout_layers(_json("layout_l1c_deeplabv3plus_full.json"))
    with pytest.raises(WeightsError,
                       match=r"14 bands.*\(3, 3, 13, 32\), expected \(3, 3, 14, 32\)"):
        KappaMaskDeepLabV3Plus(14).load_keras_layers(layers)


@pytest.mark.parametrize("size", [(MIN_TILE - TILE_MULTIPLE, MIN_TILE), (MIN_TILE, 256),
                                  (MIN_TILE + 8, MIN_TILE)])
def test_input_size_is_checked(size: tuple[int, int]) -> None:
    net = KappaMaskDeepLabV3Plus(13).eval()
    with pytest.raises(ValueError, match=rf"at least MIN_TILE = {MIN_TILE} px.*multiples of 16"):
        net(torch.zeros(1, 13, *size))
    with pytest.raises(ValueError, match=r"expects \(N, 13, H, W\)"):
        net(torch.zeros(1, 12, MIN_TILE, MIN_TILE))


def test_min_tile_is_where_symmetric_padding_stops_working() -> None:
    # the dilation-18 ASPP branch pads its 1/16 map by 18: fine at 288 (18 px), not at 272
    assert MIN_TILE == 18 * TILE_MULTIPLE
    symmetric_pad(torch.zeros(1, 1, 18, 18), 18, 18, 18, 18)
    with pytest.raises(ValueError, match="at least that size"):
        symmetric_pad(torch.zeros(1, 1, 17, 17), 18, 18, 18, 18)


def test_symmetric_pad_is_tf_symmetric() -> None:
    # numpy's 'symmetric' is tf.pad's SYMMETRIC: the edge value is repeated
    x = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
    ours = symmetric_pad(torch.from_numpy(x), 3, 0, 1, 4).numpy()
    np.testing.assert_array_equal(ours, np.pad(x, ((0, 0), (3, 0), (1, 4)), mode="symmetric"))
    assert symmetric_pad(torch.tensor([[[1.0, 2.0, 3.0]]]), 0, 0, 2, 1).tolist() == [
        [[2.0, 1.0, 1.0, 2.0, 3.0, 3.0]]]
