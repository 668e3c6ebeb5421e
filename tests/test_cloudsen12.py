"""CloudSEN12 UNetMobV2: smp's layout, the smp-made fixture, checkpoints and the engine."""

import numpy as np
import pytest
import torch
from torch import nn

import xcloud
from xcloud.errors import MissingWeightsError, WeightsError
from xcloud.evaluation.schemes import CLOUDSEN12
from xcloud.models.cloudsen12 import CLOUDSEN12_SCHEME, load_network, read_state_dict
from xcloud.models.unet_mobilenet import UnetMobileNetV2
from xcloud.synthetic import synthetic_scene

from .conftest import need_data

FIXTURE = "fixtures/cloudsen12_unetmobv2"
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
    assert "CC-BY-4.0" in info.licence
    assert info.scheme is CLOUDSEN12_SCHEME and info.scheme.nodata.value == 255


def test_scheme_is_cloudsen12s_label_coding():
    labels = {c.value: c.name for c in CLOUDSEN12.classes}
    assert CLOUDSEN12_SCHEME.name == CLOUDSEN12.name
    model_classes = (*CLOUDSEN12_SCHEME.classes, CLOUDSEN12_SCHEME.nodata)
    assert {c.value: c.name for c in model_classes} == labels
    assert CLOUDSEN12_SCHEME.values == (0, 1, 2, 3)


def test_prediction_without_weights_fails_at_the_call():
    lazy = synthetic_scene(64, seed=0).chunk({"y": 32, "x": 32})
    with pytest.raises(MissingWeightsError, match=r"not distributed with xcloud.*weights=PATH"):
        xcloud.predict(lazy, model="cloudsen12-l1c")


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
    torch.jit.script(nn.Conv2d(4, 4, 1)).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(WeightsError, match=r"TorchScript.*torch\.jit\.load\(PATH\)\.state_dict"):
        read_state_dict(tmp_path / "scripted.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="weights-only torch file"):
        read_state_dict(tmp_path / "garbage.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds a list, not a state_dict"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        xcloud.models.load("cloudsen12-l2a", weights=tmp_path / "absent.pt")
