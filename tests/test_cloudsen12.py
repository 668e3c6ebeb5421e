"""CloudSEN12 UNetMobV2: smp's layout, the smp-made fixture, checkpoints and the engine."""

import json
import pickle

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import xcloud
from xcloud.errors import MissingWeightsError, WeightsError
from xcloud.evaluation.schemes import CLOUDSEN12
from xcloud.models.cloudsen12 import (
    CLOUDSEN12_SCHEME,
    load_network,
    pad_to_multiple,
    read_state_dict,
)
from xcloud.models.unet_mobilenet import UnetMobileNetV2, UnetMobileNetV2Config
from xcloud.synthetic import synthetic_scene

from .conftest import need_data
from .test_torchscript_archive import SideEffect, module_with_payload, rewrite_archive

FIXTURE = "fixtures/cloudsen12_unetmobv2"
ARCHIVE = "fixtures/cloudsen12_torchscript"
L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def varied_network(in_channels: int, seed: int = 0) -> UnetMobileNetV2:
    """Random weights whose output varies over the image (torch's default init is ~flat)."""
    torch.manual_seed(seed)
    network = UnetMobileNetV2(in_channels)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return network.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 13-band network saved as a plain state dict with torch.save."""
    network = varied_network(13)
    path = tmp_path_factory.mktemp("cloudsen12") / "unetmobv2.pt"
    torch.save(network.state_dict(), path)
    return network, path


def test_parameter_count_and_smp_layout():
    network = UnetMobileNetV2(13, 4)
    assert parameters(network) == 6_632_260  # smp.Unet("mobilenet_v2", in_channels=13, classes=4)
    assert parameters(UnetMobileNetV2(4, 4)) == 6_632_260 - 9 * 288  # 32 3x3 kernels a band
    state = network.state_dict()
    assert len(state) == 374
    assert state["encoder.features.0.0.weight"].shape == (32, 13, 3, 3)
    assert state["encoder.features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert state["decoder.blocks.0.conv1.0.weight"].shape == (256, 1280 + 96, 3, 3)
    assert state["decoder.blocks.4.conv1.0.weight"].shape == (16, 32, 3, 3)
    assert state["segmentation_head.0.weight"].shape == (4, 16, 3, 3)


def test_fixture_made_by_smp_loads_strictly_and_gives_its_logits():
    folder = need_data(FIXTURE)
    network = load_network(folder / "unet_mobilenet_v2_13in_4cls_state_dict.pt", in_channels=13)
    assert not network.training
    with np.load(folder / "io.npz") as data:
        x, expected = data["x"], data["logits"]
    with torch.inference_mode():
        logits = network(torch.from_numpy(x)).numpy()
    assert logits.shape == expected.shape == (2, 4, 128, 96)
    assert np.abs(logits - expected).max() <= 1e-4
    model = xcloud.models.load("cloudsen12-l1c",
                               weights=folder / "unet_mobilenet_v2_13in_4cls_state_dict.pt")
    softmax = torch.softmax(torch.from_numpy(expected), dim=1).numpy()
    np.testing.assert_allclose(model.predict_proba(x), softmax, atol=1e-5)


def test_input_sizes_that_do_not_divide_by_32_are_refused():
    network = UnetMobileNetV2(4)
    with pytest.raises(ValueError, match="multiples of 32"):
        network(torch.zeros(1, 4, 64, 48))
    with pytest.raises(ValueError, match=r"takes \(N, 4, H, W\)"):
        network(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(("name", "bands", "level"), [
    ("cloudsen12-l1c", L1C, "L1C"),
    ("cloudsen12-l2a", tuple(b for b in L1C if b != "B10"), "L2A"),
    ("cloudsen12-rgbn", ("B08", "B04", "B03", "B02"), "L1C"),
    ("cloudsen12-landsat", ("B01", "B02", "B03", "B04", "B08", "B10", "B11", "B12"), "L1C"),
])
def test_registered_variants(name, bands, level):
    info = xcloud.models.get(name).info
    assert (info.bands, info.level) == (bands, level)
    assert (info.tile_size, info.tile_overlap, info.resolution) == (512, 64, 10.0)
    assert info.normalization.kind == "none" and info.needs_weights_file
    assert "CC-BY-NC-4.0" in info.licence  # the model card's licence: non-commercial
    assert info.scheme is CLOUDSEN12_SCHEME and info.scheme.nodata.value == 255


def test_scheme_is_cloudsen12s_label_coding():
    labels = {c.value: c.name for c in CLOUDSEN12.classes}
    assert CLOUDSEN12_SCHEME.name == CLOUDSEN12.name
    model_classes = (*CLOUDSEN12_SCHEME.classes, CLOUDSEN12_SCHEME.nodata)
    assert {c.value: c.name for c in model_classes} == labels
    assert CLOUDSEN12_SCHEME.values == (0, 1, 2, 3)


def test_without_weights_the_published_file_is_fetched_or_the_fix_named(tmp_path, monkeypatch):
    monkeypatch.setenv("XCLOUD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XCLOUD_WEIGHTS_URL", "http://127.0.0.1:9")  # a closed port: no network
    lazy = synthetic_scene(64, seed=0).chunk({"y": 32, "x": 32})
    for call in (lambda: xcloud.predict(lazy, model="cloudsen12-l1c"),
                 lambda: xcloud.models.load("cloudsen12-l2a")):
        with pytest.raises(MissingWeightsError, match=r"(?s)could not download.*weights=PATH"):
            call()


def test_predict_through_the_engine_equals_a_direct_call(checkpoint):
    network, path = checkpoint
    scene = synthetic_scene(64, seed=3)
    size, overlap = 128, 32
    proba = xcloud.predict(scene, model="cloudsen12-l1c", weights=path, tile_size=size,
                           tile_overlap=overlap, output="proba")
    cube = np.stack([scene[b].values for b in L1C])
    after = size - overlap - cube.shape[-1]
    tile = np.pad(cube, [(0, 0), (overlap, after), (overlap, after)], mode="symmetric")
    with torch.inference_mode():
        logits = network(torch.from_numpy(tile[None]))[0, :, overlap:-after, overlap:-after]
    expected = torch.softmax(logits, dim=0).numpy()
    assert expected.std(axis=(1, 2)).min() > 1e-2  # the network is not constant
    np.testing.assert_allclose(proba.values, expected, atol=1e-4)  # float32 rounding
    assert proba.sizes["class"] == 4


def test_lightning_and_safetensors_checkpoints(checkpoint, tmp_path):
    network, _ = checkpoint
    state = network.state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
               tmp_path / "lightning.ckpt")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file(state, str(tmp_path / "unetmobv2.safetensors"))
    for name in ("lightning.ckpt", "unetmobv2.safetensors"):
        tensors = read_state_dict(tmp_path / name)
        assert tensors.keys() == state.keys()
        assert all(torch.equal(tensors[k], state[k]) for k in state)


def test_checkpoints_that_do_not_fit_are_refused(checkpoint, tmp_path):
    network, _ = checkpoint
    state = network.state_dict()
    state["decoder.blocks.0.conv1.0.kernel"] = state.pop("decoder.blocks.0.conv1.0.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(WeightsError, match=r"missing decoder\.blocks\.0\.conv1\.0\.weight.*"
                                           r"unexpected decoder\.blocks\.0\.conv1\.0\.kernel"):
        xcloud.models.load("cloudsen12-l1c", weights=tmp_path / "renamed.pt")
    with pytest.raises(WeightsError, match=r"encoder\.features\.0\.0\.weight is \(32, 13, 3, 3\)"
                                           r".*in_channels=4"):
        xcloud.models.load("cloudsen12-rgbn", weights=checkpoint[1])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    conv = nn.Conv2d(4, 4, 1)
    torch.jit.script(conv).save(str(tmp_path / "scripted.pt"))  # read, not run, not refused
    tensors = read_state_dict(tmp_path / "scripted.pt")
    assert tensors.keys() == {"weight", "bias"} and torch.equal(tensors["bias"], conv.bias)
    with pytest.raises(WeightsError, match=r"missing decoder\.blocks\.0\.conv1\.0\.weight.*"
                                           r"in_channels=4, classes=4"):
        xcloud.models.load("cloudsen12-rgbn", weights=tmp_path / "scripted.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="weights-only torch file"):
        read_state_dict(tmp_path / "garbage.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds a list, not a state_dict"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(MissingWeightsError, match="no such file"):
        xcloud.models.load("cloudsen12-l2a", weights=tmp_path / "absent.pt")


# -- the published TorchScript archives ('jit' models), read and never run ----------------------

@pytest.fixture(scope="module")
def archive():
    """The fixture archive (smp Unet traced and saved as the authors' 'jit' models) and io.npz."""
    folder = need_data(ARCHIVE)
    with np.load(folder / "io.npz") as data:
        reference = {name: data[name] for name in data.files}
    return folder / "cloudsen12l2a.pt", reference, json.loads((folder / "meta.json").read_text())


def test_decoder_channels_and_full_size_parameter_counts(archive):
    meta = archive[2]["fixture"]
    fixture = UnetMobileNetV2(12, 4, (32, 16, 16, 16, 16))
    assert parameters(fixture) == meta["n_params_fixture"] == 2_664_036
    assert parameters(UnetMobileNetV2(12, 4)) == meta["n_params_full_size"] == 6_631_972
    full = UnetMobileNetV2(12, 4).state_dict()
    assert list(fixture.state_dict()) == list(full)  # the same 374 names, in the same order
    for entry in meta["shapes_that_differ_from_full_size"]:
        assert tuple(full[entry["key"]].shape) == tuple(entry["full_size"]), entry["key"]
        assert tuple(fixture.state_dict()[entry["key"]].shape) == tuple(entry["fixture"])
    config = UnetMobileNetV2Config.from_state_dict(fixture.state_dict())
    assert config == UnetMobileNetV2Config(12, 4, (32, 16, 16, 16, 16))
    with pytest.raises(ValueError, match="decoder_channels must be 5"):
        UnetMobileNetV2(12, 4, (32, 16))


def test_published_archive_loads_and_gives_the_authors_logits_and_classes(archive):
    path, reference, _ = archive
    model = xcloud.models.load("cloudsen12-l2a", weights=path)
    assert model.network.config == UnetMobileNetV2Config(12, 4, (32, 16, 16, 16, 16))
    assert model.info.bands == tuple(reference_bands(archive))
    logits = model.predict_logits(reference["x"])
    assert logits.shape == reference["logits"].shape == (2, 4, 96, 96)
    assert np.abs(logits - reference["logits"]).max() <= 5e-3  # measured 8.9e-5
    proba = model.predict_proba(reference["x"])
    expected = torch.softmax(torch.from_numpy(reference["logits"]), dim=1).numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-4)
    classes = np.stack([model.classify(p) for p in proba])
    assert (classes == reference["classes"]).mean() >= 0.999  # measured 1.0
    assert np.bincount(classes.ravel(), minlength=4).min() > 0.1 * classes.size / 4


def reference_bands(archive) -> list[str]:
    return archive[2]["fixture"]["bands_in_channel_order"]


def test_sizes_off_the_32_grid_are_reflect_padded_as_cdmodel_predict(archive):
    path, reference, _ = archive
    model = xcloud.models.load("cloudsen12-l2a", weights=path)
    x_odd = reference["x_odd"]
    padded, (rows, cols) = pad_to_multiple(x_odd[None])
    assert padded.shape[-2:] == (96, 64) and (rows, cols) == (slice(12, 84), slice(6, 58))
    np.testing.assert_array_equal(padded[0, :, 11, 6:58], x_odd[:, 1])  # edge not repeated
    proba = model.predict_proba(x_odd[None])[0]
    assert proba.shape == (4, 72, 52)
    assert (model.classify(proba) == reference["classes_odd"]).mean() >= 0.999  # measured 1.0
    tiny, (rows, cols) = pad_to_multiple(np.zeros((1, 1, 10, 33), np.float32))
    assert tiny.shape[-2:] == (32, 64) and (rows, cols) == (slice(11, 21), slice(15, 48))


def _scene(image: np.ndarray, bands) -> xr.Dataset:
    height, width = image.shape[-2:]
    coords = {"y": 5_800_000.0 - 10 * (np.arange(height) + 0.5),
              "x": 500_000.0 + 10 * (np.arange(width) + 0.5)}
    return xr.Dataset({b: (("y", "x"), image[i]) for i, b in enumerate(bands)}, coords=coords)


def test_predict_on_a_dataset_gives_the_authors_classes(archive):
    """Where the engine's tile is the authors' whole image (96 x 96: one tile, no overlap),
    xcloud.predict gives CDModel.forward's classes."""
    path, reference, _ = archive
    bands = reference_bands(archive)
    for image, expected in zip(reference["x"], reference["classes"], strict=True):
        scene = _scene(image, bands)[bands[::-1]]  # bands are taken by name, not position
        mask = xcloud.predict(scene, model="cloudsen12-l2a", weights=path, tile_size=96,
                              tile_overlap=0)
        assert mask.dtype == np.uint8 and mask.shape == expected.shape
        assert (mask.values == expected).mean() >= 0.999  # measured 1.0


def test_an_archive_of_other_bands_is_refused(archive):
    path, _, _ = archive
    with pytest.raises(WeightsError, match=r"12 input bands \(encoder\.features\.0\.0\.weight "
                                           r"is \(32, 12, 3, 3\)\); this model takes 4"):
        xcloud.models.load("cloudsen12-rgbn", weights=path)


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl"])
def test_an_archive_carrying_pickled_code_is_refused_and_the_code_never_runs(archive, member,
                                                                              tmp_path):
    path, _, _ = archive
    marker = tmp_path / "payload-ran"
    payload = (module_with_payload(marker) if member == "data.pkl"
               else pickle.dumps((SideEffect(marker),), protocol=2))
    evil = rewrite_archive(path, tmp_path / "cloudsen12l2a.pt", {member: payload})
    for name in ("cloudsen12-l2a", "cloudsen12-l1c"):
        with pytest.raises(WeightsError, match=r"names the global (builtins\.exec|posix\.mkdir)"):
            xcloud.models.load(name, weights=evil)
    assert not marker.exists()
