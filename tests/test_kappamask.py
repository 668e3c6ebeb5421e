"""KappaMask: the published U-Net and its Keras HDF5 files, normalisation, engine, checkpoints."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

import xcloud
from tests.conftest import need_data
from xcloud.errors import MissingWeightsError, WeightsError
from xcloud.models.classes import KAPPAMASK_SCHEME
from xcloud.models.kappamask import (
    KAPPAMASK_CHANNELS,
    KAPPAMASK_L1C_BANDS,
    KAPPAMASK_L2A_BANDS,
    KAPPAMASK_L2A_DEEPLAB_BANDS,
    KAPPAMASK_MAX_V,
    default_range,
    load_checkpoint,
    save_checkpoint,
)
from xcloud.models.kappamask_unet import KappaMaskConfig, KappaMaskUNet
from xcloud.models.keras_hdf5 import KerasLayer, read_keras_weights
from xcloud.synthetic import synthetic_scene

pytest.importorskip("safetensors")
pytest.importorskip("h5py")

FIXTURES = "fixtures/kappamask_keras"
SMALL = {"depth": 3, "filters": 8}
VARIED = {"head_channels": 0}  # random 2-channel ReLU heads are often dead: flat output
LEVELS = {"l1c": KAPPAMASK_L1C_BANDS, "l2a": KAPPAMASK_L2A_BANDS}


def keras_parameter_count(bands, classes, depth, filters, head=2):
    """Parameters of km_predict's Unet layer list, counted layer by layer."""
    def conv(kernel, cin, cout):
        return kernel * kernel * cin * cout + cout

    widths = [filters * 2**level for level in range(depth)]
    total, previous = 0, bands
    for width in widths:
        total += conv(3, previous, width) + conv(3, width, width)
        previous = width
    for level in reversed(range(depth - 1)):
        width = widths[level]
        total += conv(2, widths[level + 1], width) + conv(3, 2 * width, width)
        total += conv(3, width, width)
    return total + conv(3, filters, head) + conv(1, head, classes)


def parameters(network):
    return sum(p.numel() for p in network.parameters())


@pytest.fixture(scope="module")
def io():
    return np.load(need_data(f"{FIXTURES}/io.npz"))


@pytest.fixture(scope="module")
def meta():
    return json.loads(need_data(f"{FIXTURES}/meta.json").read_text())


def nchw(array):
    return np.ascontiguousarray(np.asarray(array).transpose(0, 3, 1, 2))


# -- the network ---------------------------------------------------------------------------


def test_default_network_has_the_published_size():
    with torch.device("meta"):
        assert parameters(KappaMaskUNet(13)) == 31_038_612
        assert parameters(KappaMaskUNet(13)) == keras_parameter_count(13, 6, 5, 64)
        assert parameters(KappaMaskUNet(13, filters=8)) == 486_692  # the fixture's units=8


@pytest.mark.parametrize("depth", [5, 6, 7])
@pytest.mark.parametrize("filters", [32, 64])
def test_parameter_counts_of_the_paper_grid(depth, filters):
    with torch.device("meta"):
        network = KappaMaskUNet(13, depth=depth, filters=filters)
    assert parameters(network) == keras_parameter_count(13, 6, depth, filters)


@pytest.mark.parametrize("level", ["l1c", "l2a"])
def test_full_size_layouts_map_weight_by_weight(level):
    layout = json.loads(need_data(f"{FIXTURES}/layout_{level}_unet_full.json").read_text())
    assert layout["n_values"] == 31_038_612
    weighted = [entry for entry in layout["layers"] if entry["weights"]]
    # each array filled with its position: after loading, a convolution shows which it got
    layers = [KerasLayer(entry["layer"], tuple(w["name"] for w in entry["weights"]),
                         tuple(np.broadcast_to(np.float32(2 * i + j), w["shape"])
                               for j, w in enumerate(entry["weights"])))
              for i, entry in enumerate(weighted)]
    config = KappaMaskConfig.from_keras_layers(layers)
    assert config == KappaMaskConfig(13)  # 13 bands, 6 channels, 5 levels x 64, head 2
    network = KappaMaskUNet.from_config(config)
    assert parameters(network) == 31_038_612
    network.load_keras_layers(layers)
    convolutions = network.convolutions()
    assert len(convolutions) == len(weighted) == 24
    for i, ((name, conv), entry) in enumerate(zip(convolutions, weighted, strict=True)):
        kernel, bias = (w["shape"] for w in entry["weights"])
        assert tuple(conv.weight.shape) == (kernel[3], kernel[2], kernel[0], kernel[1]), name
        assert list(conv.bias.shape) == bias
        assert float(conv.weight.detach().flatten()[0]) == 2 * i
        assert float(conv.bias.detach()[0]) == 2 * i + 1


def test_keras_kernels_are_transposed_not_reshaped():
    network = KappaMaskUNet(13, filters=8)
    rng = np.random.default_rng(0)
    layers = []
    for position, (_, conv) in enumerate(network.convolutions()):
        kh, kw = conv.kernel_size
        kernel = rng.standard_normal((kh, kw, conv.in_channels, conv.out_channels))
        layers.append(KerasLayer(f"conv2d_{position}", ("k", "b"),
                                 (kernel.astype(np.float32),
                                  rng.standard_normal(conv.out_channels).astype(np.float32))))
    network.load_keras_layers(layers)
    first = network.convolutions()[0][1].weight.detach().numpy()
    kernel = layers[0].arrays[0]
    assert first[5, 7, 0, 2] == kernel[0, 2, 7, 5]  # torch (out, in, kh, kw)


def test_layers_that_do_not_fit_are_refused_naming_the_first():
    network = KappaMaskUNet(13, filters=8)
    layers = [KerasLayer(f"conv2d_{i}", ("k", "b"),
                         (np.zeros((*c.kernel_size, c.in_channels, c.out_channels), np.float32),
                          np.zeros(c.out_channels, np.float32)))
              for i, (_, c) in enumerate(network.convolutions())]
    wrong = list(layers)
    wrong[3] = KerasLayer("conv2d_3", ("k", "b"), (np.zeros((3, 3, 16, 32), np.float32),
                                                   np.zeros(32, np.float32)))
    with pytest.raises(WeightsError, match=r"weighted layer 3 of the file \('conv2d_3'.*"
                                           r"convolution 3 of the network \(encoder\.1\.1\.0"):
        network.load_keras_layers(wrong)
    with pytest.raises(WeightsError, match=r"23 weighted layers.*24 convolutions"):
        network.load_keras_layers(layers[:-1])
    with pytest.raises(WeightsError, match="batch_norm=False"):
        KappaMaskUNet(13, filters=8, batch_norm=True).load_keras_layers(layers)


@pytest.mark.parametrize(("depth", "size"), [(5, (32, 48)), (6, (64, 32)), (7, (64, 128))])
def test_forward_shapes_and_sigmoid_outputs(depth, size):
    network = KappaMaskUNet(13, depth=depth, filters=4).eval()
    with torch.inference_mode():
        x = torch.rand(2, 13, *size)
        out = network(x)
        assert out.shape == (2, 6, *size)
        torch.testing.assert_close(out, torch.sigmoid(network.logits(x)))


def test_sizes_that_do_not_divide_are_refused():
    network = KappaMaskUNet(13, filters=4)
    with pytest.raises(ValueError, match="multiples of 16"):
        network(torch.rand(1, 13, 40, 64))
    with pytest.raises(ValueError, match=r"\(N, 13, H, W\)"):
        network(torch.rand(1, 12, 64, 64))


def test_up_convolution_pads_like_keras_same():
    up = KappaMaskUNet(13, **SMALL).decoder[-1].up  # 16 -> 8 channels
    conv = up[-1][0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # bottom-right tap of the 2x2 kernel
        out = up(torch.arange(1.0, 5.0).reshape(1, 1, 2, 2).repeat(1, 16, 1, 1))[0, 0]
    # upsampled [[1, 1, 2, 2], ...], read one row and column further, zeros past the end
    expected = [[1, 2, 2, 0], [3, 4, 4, 0], [3, 4, 4, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(out.numpy(), expected)


def test_dropout_on_the_two_deepest_levels_in_training_only():
    torch.manual_seed(0)
    network = KappaMaskUNet(13, **SMALL)
    widths = []
    network.dropout.register_forward_hook(lambda _, args, out: widths.append(out.shape[1]))
    x = torch.rand(1, 13, 16, 16)
    network.train()
    assert not torch.equal(network(x), network(x))
    assert widths == [16, 32] * 2
    network.eval()
    assert torch.equal(network(x), network(x))


# -- the published files, as they are -------------------------------------------------------


@pytest.mark.parametrize("level", ["l1c", "l2a"])
def test_published_files_load_and_reproduce_the_reference(level, io):
    path = need_data(f"{FIXTURES}/{level}_unet.hdf5")
    model = xcloud.models.load(f"kappamask-{level}", weights=path)
    assert model.info.bands == LEVELS[level]
    assert "U-Net 5 levels x 8 filters" in model.info.version
    proba = model.predict_proba(nchw(io[f"{level}_x"]))
    reference = nchw(io[f"{level}_prob"])
    assert proba.shape == reference.shape == (2, 6, 128, 128) and proba.dtype == np.float32
    np.testing.assert_allclose(proba, reference, atol=1e-4, rtol=0)
    classes = np.stack([model.classify(p) for p in proba])
    assert (classes == io[f"{level}_classes"]).mean() >= 0.999
    assert len(np.unique(io[f"{level}_classes"])) >= 4  # several classes win


def published_units(io, level, bands):
    """io.npz `raw` (DN / 65535) and `offsets` in xcloud.load's units, (N, bands, H, W):
    reflectance (DN + offset) / 10000, AOT and WVP DN / 1000."""
    dn = np.round(nchw(io[f"{level}_raw"]).astype(np.float64) * 65535)
    units = np.array([1000.0 if b in ("AOT", "WVP") else 10000.0 for b in bands])
    offsets = io[f"{level}_offsets"]
    return ((dn + offsets[:, None, None]) / units[:, None, None]).astype(np.float32)


def km_predict_x(io, level, max_v):
    """km_predict's DataGenerator formula with the given maxima (min_v = 0), NCHW."""
    raw = nchw(io[f"{level}_raw"]).astype(np.float64)
    value = raw + io[f"{level}_offsets"][:, None, None] / 65535
    return np.maximum(0.0, value / np.asarray(max_v)[:, None, None])


@pytest.mark.parametrize("level", ["l1c", "l2a"])
def test_normalisation_is_the_data_generators_without_the_double_offset(level, io):
    info = xcloud.models.get(f"kappamask-{level}").info
    assert info.normalization.kind == "minmax_floor"
    np.testing.assert_allclose(io[f"{level}_max_v"], KAPPAMASK_MAX_V[level.upper(), "unet"])
    x = info.normalization.apply(published_units(io, level, info.bands))
    # xcloud = the generator's formula with max_v
    np.testing.assert_allclose(x, km_predict_x(io, level, io[f"{level}_max_v"]), atol=1e-6)
    # the formula with max_v_effective (max_v + 2 offset / 65535) is what the network got
    np.testing.assert_allclose(km_predict_x(io, level, io[f"{level}_max_v_effective"]),
                               nchw(io[f"{level}_x"]), atol=1e-6)
    shift = io[f"{level}_max_v_effective"] - io[f"{level}_max_v"]
    np.testing.assert_allclose(shift, 2 * io[f"{level}_offsets"] / 65535)
    if level == "l2a":  # km_predict applies no offset to L2A: nothing differs
        np.testing.assert_allclose(x, nchw(io["l2a_x"]), atol=1e-6)
    else:  # L1C, offset -1000: xcloud's values are the reference's times max_v_eff / max_v
        ratio = (io["l1c_max_v_effective"] / io["l1c_max_v"])[:, None, None]
        np.testing.assert_allclose(x, nchw(io["l1c_x"]) * ratio, rtol=1e-5, atol=1e-6)
        assert np.abs(x - nchw(io["l1c_x"])).max() > 0.5


def test_measured_effect_of_not_keeping_the_double_offset(io):
    """The L1C fixture's classes with max_v (xcloud) vs max_v_effective (km_predict): the
    number in docs/models/kappamask.md (random weights; the published weights' effect is not
    measured here)."""
    model = xcloud.models.load("kappamask-l1c", weights=need_data(f"{FIXTURES}/l1c_unet.hdf5"))
    x = model.info.normalization.apply(published_units(io, "l1c", model.info.bands))
    classes = model.predict_proba(x).argmax(1)
    changed = float((classes != io["l1c_classes"]).mean())
    assert changed == pytest.approx(0.4149, abs=5e-4)


def fixture_scene(io, level, index, bands):
    """One fixture image as an xcloud.load-style Dataset (y, x) in reflectance."""
    values = published_units(io, level, bands)[index]
    base = synthetic_scene(values.shape[-1], seed=0)
    return xr.Dataset({b: (("y", "x"), values[i]) for i, b in enumerate(bands)},
                      coords={"y": base["y"], "x": base["x"]})


@pytest.mark.parametrize("level", ["l1c", "l2a"])
def test_the_whole_path_gives_the_authors_classes(level, io):
    """A Dataset through ds.cloudmask.predict: one 128 px tile without overlap, the tiling
    km_predict's 128 px fixture network had (a 512 px tile would mirror-pad the 128 px scene
    and change the context of every pixel)."""
    path = need_data(f"{FIXTURES}/{level}_unet.hdf5")
    options = {"model": f"kappamask-{level}", "weights": path, "tile_size": 128,
               "tile_overlap": 0}
    model = xcloud.models.load(f"kappamask-{level}", weights=path)
    for index in range(2):
        scene = fixture_scene(io, level, index, LEVELS[level])
        mask = scene.cloudmask.predict(**options)
        assert mask.dtype == np.uint8
        assert mask.attrs["flag_meanings"] == ("undefined clear cloud_shadow "
                                               "semi_transparent_cloud cloud missing")
        if level == "l2a":  # no offset: the authors' input exactly
            expected = io["l2a_classes"][index]
        else:  # the authors' network on the input without the double offset
            x = km_predict_x(io, level, io["l1c_max_v"])[index : index + 1]
            expected = model.predict_proba(x.astype(np.float32))[0].argmax(0)
        assert (mask.values == expected).mean() >= 0.999
        proba = scene.cloudmask.predict(**options, output="proba")
        assert list(proba["class"].values) == ["undefined", "clear", "cloud_shadow",
                                               "semi_transparent_cloud", "cloud", "missing"]
        if level == "l2a":
            np.testing.assert_allclose(proba.values, nchw(io["l2a_prob"])[index], atol=1e-4)


def test_the_scheme_is_the_channel_order_in_km_predict_coding():
    assert KAPPAMASK_CHANNELS == ("UNDEFINED", "CLEAR", "CLOUD_SHADOW",
                                  "SEMI_TRANSPARENT_CLOUD", "CLOUD", "MISSING")
    assert KAPPAMASK_SCHEME.names == tuple(c.lower() for c in KAPPAMASK_CHANNELS)
    assert KAPPAMASK_SCHEME.values == (0, 1, 2, 3, 4, 5)  # value = channel index
    assert KAPPAMASK_SCHEME.nodata == KAPPAMASK_SCHEME.classes[5]  # MISSING is no data
    from xcloud.evaluation.schemes import get_scheme, scheme_of_model

    info = xcloud.models.get("kappamask-l1c").info
    labels = scheme_of_model(info)
    assert labels is get_scheme("kappamask-km-predict")
    assert [labels.kappamask_class(v) for v in range(6)] == [5, 1, 2, 3, 4, 0]  # KappaSet codes


def test_registered_models():
    names = {"kappamask-l1c": KAPPAMASK_L1C_BANDS, "kappamask-l2a": KAPPAMASK_L2A_BANDS,
             "kappamask-l1c-deeplabv3plus": KAPPAMASK_L1C_BANDS,
             "kappamask-l2a-deeplabv3plus": KAPPAMASK_L2A_DEEPLAB_BANDS}
    assert set(names) <= set(xcloud.models.list())
    for name, bands in names.items():
        info = xcloud.models.get(name).info
        assert info.bands == bands and info.needs_weights_file
        assert (info.tile_size, info.tile_overlap, info.resolution) == (512, 32, 10.0)
        assert info.normalization.kind == "minmax_floor"
    assert "B07" not in KAPPAMASK_L2A_BANDS and len(KAPPAMASK_L2A_BANDS) == 13
    info = xcloud.models.get("kappamask-l2a").info
    # max_v in DN / 65535: AOT (DN / 1000) 0.0039 -> 0.256, B01 (reflectance) x 6.5535
    assert info.normalization.scale[0] == pytest.approx(0.003906309604644775 * 65.535)
    assert info.normalization.scale[1] == pytest.approx(0.2833447754383087 * 6.5535)
    assert default_range("L1C")[1][1] == pytest.approx(0.326 * 6.5535)


def test_a_file_of_the_other_architecture_or_level_names_the_right_model(tmp_path):
    path = need_data(f"{FIXTURES}/l1c_unet.hdf5")
    with pytest.raises(WeightsError, match=r"holds a KappaMask U-Net.*model='kappamask-l1c'"):
        xcloud.models.load("kappamask-l1c-deeplabv3plus", weights=path)
    renamed = shutil.copy(need_data(f"{FIXTURES}/l2a_unet.hdf5"), tmp_path / "l2a_unet.hdf5")
    with pytest.raises(WeightsError, match="published file of model='kappamask-l2a'"):
        xcloud.models.load("kappamask-l1c", weights=renamed)
    (tmp_path / "model.hdf5").write_text("not HDF5")
    with pytest.raises(WeightsError, match=r"neither an HDF5 file nor an xcloud checkpoint"):
        xcloud.models.load("kappamask-l1c", weights=tmp_path / "model.hdf5")


def test_deeplab_files_through_the_adapter(tmp_path):
    """The published DeepLabv3+ layout (full size, seeded weights) through ``weights=``."""
    pytest.importorskip("xcloud.models.kappamask_deeplab")
    script = need_data("fixtures").parent.parent / "tools" / "make_kappamask_hdf5.py"
    if not script.exists():
        pytest.skip(f"{script} is absent")
    layout = need_data(f"{FIXTURES}/layout_l1c_deeplabv3plus_full.json")
    path = tmp_path / "l1c_deeplabv3plus.hdf5"
    subprocess.run([sys.executable, str(script), str(layout), "1234", str(path)], check=True)
    reference = np.load(need_data(f"{FIXTURES}/deeplab_l1c_io.npz"))
    model = xcloud.models.load("kappamask-l1c-deeplabv3plus", weights=path)
    proba = model.predict_proba(nchw(reference["x"]))
    np.testing.assert_allclose(proba, nchw(reference["prob"]), atol=1e-3, rtol=0)
    assert (proba[0].argmax(0) == reference["classes"][0]).mean() >= 0.999
    with pytest.raises(WeightsError, match=r"holds a KappaMask DeepLabv3\+.*"
                                           r"model='kappamask-l1c-deeplabv3plus'"):
        xcloud.models.load("kappamask-l1c", weights=path)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A weights cache without the published files and a mirror that cannot be reached."""
    monkeypatch.setenv("XCLOUD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XCLOUD_WEIGHTS_URL", "http://127.0.0.1:9/")


def test_without_weights_the_published_file_is_fetched_or_named(empty_cache):
    with pytest.raises(MissingWeightsError, match=r"(?s)l1c_unet\.hdf5.*pass weights=PATH"):
        xcloud.predict(synthetic_scene(32), model="kappamask-l1c")
    with pytest.raises(MissingWeightsError, match=r"l2a_deeplabv3plus\.hdf5"):
        xcloud.models.load("kappamask-l2a-deeplabv3plus")


def test_missing_weights_fail_when_predict_is_called_not_at_compute(empty_cache):
    lazy = synthetic_scene(64, seed=0).chunk({"y": 32, "x": 32})
    with pytest.raises(MissingWeightsError, match="weights=PATH"):
        xcloud.predict(lazy, model="kappamask-l1c")


# -- xcloud's own checkpoints ---------------------------------------------------------------


def small_checkpoint(path, *, level="L1C", seed=0, maximum=None, bands=None, **config):
    torch.manual_seed(seed)
    layout = LEVELS[level.lower()]
    bands = layout if bands is None else bands
    network = KappaMaskUNet(len(bands), **{**SMALL, **config})
    minimum = [0.0] * len(bands)
    maximum = default_range(level)[1] if maximum is None else maximum
    save_checkpoint(path, network, bands=bands, minimum=minimum, maximum=maximum, level=level,
                    extra={"epoch": 7, "history": [{"val_loss": 0.5}]})
    return network.eval()


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "model.pth"])
def test_checkpoint_round_trip(tmp_path, name):
    network = small_checkpoint(tmp_path / name, maximum=[0.5] * 13)
    loaded, meta = load_checkpoint(tmp_path / name)
    x = torch.rand(2, 13, 32, 32)
    with torch.inference_mode():
        assert torch.equal(network(x), loaded(x))
    assert not loaded.training
    assert meta.config == network.config and meta.config.n_classes == 6
    assert meta.bands == KAPPAMASK_L1C_BANDS and meta.level == "L1C"
    assert meta.minimum == (0.0,) * 13 and meta.maximum == (0.5,) * 13
    assert meta.extra == {"epoch": 7, "history": [{"val_loss": 0.5}]}
    assert meta.xcloud_version == xcloud.__version__
    model = xcloud.models.load("kappamask-l1c", weights=tmp_path / name)
    assert model.info.normalization.kind == "minmax_floor"
    assert model.info.normalization.scale == (0.5,) * 13


def test_torch_checkpoint_is_a_plain_dict(tmp_path):
    small_checkpoint(tmp_path / "model.pt")
    content = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(content) == {"state_dict", "xcloud_kappamask"}
    assert json.loads(content["xcloud_kappamask"])["format_version"] == 2
    assert all(isinstance(t, torch.Tensor) for t in content["state_dict"].values())


def test_checkpoints_of_the_old_five_channel_format_are_refused(tmp_path):
    small_checkpoint(tmp_path / "model.pt")
    content = torch.load(tmp_path / "model.pt", weights_only=True)
    old = json.loads(content["xcloud_kappamask"])
    old["format_version"] = 1
    torch.save({**content, "xcloud_kappamask": json.dumps(old)}, tmp_path / "old.pt")
    with pytest.raises(WeightsError, match=r"format version 1.*train it again"):
        load_checkpoint(tmp_path / "old.pt")


def test_pickled_objects_are_never_loaded(tmp_path):
    torch.save(KappaMaskUNet(13, **SMALL), tmp_path / "module.pt")
    with pytest.raises(WeightsError, match="weights-only"):
        load_checkpoint(tmp_path / "module.pt")


def test_files_without_metadata_or_of_other_kinds_are_refused(tmp_path):
    from safetensors.torch import save_file

    network = KappaMaskUNet(13, **SMALL)
    save_file(network.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(WeightsError, match="save_checkpoint"):
        load_checkpoint(tmp_path / "bare.safetensors")
    torch.save(network.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="no 'state_dict'"):
        load_checkpoint(tmp_path / "bare.pt")
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"\.safetensors"):
        load_checkpoint(tmp_path / "model.h5")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(MissingWeightsError, match="no such file"):
        xcloud.models.load("kappamask-l1c", weights=tmp_path / "absent.hdf5")


def test_tensors_that_do_not_fit_the_metadata_are_refused(tmp_path):
    small_checkpoint(tmp_path / "model.pt")
    content = torch.load(tmp_path / "model.pt", weights_only=True)
    other = KappaMaskUNet(13, depth=3, filters=16).state_dict()
    torch.save({**content, "state_dict": other}, tmp_path / "wide.pt")
    with pytest.raises(WeightsError, match=r"bottleneck\.0\.0\.weight is \(64, 32, 3, 3\), "
                                            r"not \(32, 16, 3, 3\).*and \d+ more"):
        load_checkpoint(tmp_path / "wide.pt")
    del content["state_dict"]["classifier.bias"]
    torch.save(content, tmp_path / "short.pt")
    with pytest.raises(WeightsError, match=r"missing classifier\.bias"):
        load_checkpoint(tmp_path / "short.pt")


def test_inconsistent_metadata_is_refused(tmp_path):
    network = KappaMaskUNet(13, **SMALL)
    low, high = default_range("L1C")
    with pytest.raises(WeightsError, match="12 bands for 13 input channels"):
        save_checkpoint(tmp_path / "m.pt", network, bands=KAPPAMASK_L1C_BANDS[:12],
                        minimum=low, maximum=high, level="L1C")
    with pytest.raises(WeightsError, match="not above its minimum"):
        save_checkpoint(tmp_path / "m.pt", network, bands=KAPPAMASK_L1C_BANDS,
                        minimum=high, maximum=high, level="L1C")
    with pytest.raises(WeightsError, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", network, bands=KAPPAMASK_L1C_BANDS,
                        minimum=low, maximum=high, level="L1C", extra={"model": network})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("model", "level", "bands", "config", "message"),
    [
        ("kappamask-l1c", "L2A", KAPPAMASK_L2A_BANDS, {},
         "saved for level L2A; use it with model='kappamask-l2a'"),
        ("kappamask-l1c", "L1C", KAPPAMASK_L2A_BANDS, {}, r"missing: \[.*'B10'.*\], not used"),
        ("kappamask-l1c", "L1C", KAPPAMASK_L1C_BANDS, {"n_classes": 5}, "predicts 5 channels"),
        ("kappamask-l1c-deeplabv3plus", "L1C", KAPPAMASK_L1C_BANDS, {},
         "checkpoints hold the KappaMask U-Net.*model='kappamask-l1c'"),
    ],
)
def test_checkpoints_that_do_not_fit_the_registered_layout(tmp_path, model, level, bands,
                                                            config, message):
    small_checkpoint(tmp_path / "model.pt", level=level, bands=bands,
                     maximum=[1.0] * len(bands), **config)
    with pytest.raises(WeightsError, match=message):
        xcloud.models.load(model, weights=tmp_path / "model.pt")


def test_only_the_torch_runtime(tmp_path):
    small_checkpoint(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="runtime must be 'auto' or 'torch'"):
        xcloud.models.load("kappamask-l1c", weights=tmp_path / "model.pt",
                           runtime="onnxruntime")


@pytest.fixture(scope="module")
def cloudy_scene():
    scene = synthetic_scene(192, seed=3)
    rng = np.random.default_rng(0)
    scene["AOT"] = (("y", "x"), rng.uniform(0.05, 0.3, (192, 192)).astype(np.float32))
    scene["WVP"] = (("y", "x"), rng.uniform(0.5, 3.0, (192, 192)).astype(np.float32))
    for name in scene.data_vars:  # no data: NaN in every band
        scene[name][:20, :30] = np.nan
    return scene


def direct_proba(model, scene, *, size=512, overlap=32):
    """The whole image as one 512 px tile, mirrored at the edges; NaN where there is no data."""
    cube = np.stack([scene[b].values for b in model.info.bands])
    image = model.info.normalization.apply(cube)
    empty = np.isnan(cube).all(0)
    image[:, empty] = 0.0
    after = size - overlap - cube.shape[-1]
    padded = np.pad(image, [(0, 0), (overlap, after), (overlap, after)], mode="symmetric")
    proba = model.predict_proba(padded[None])[0][:, overlap:-after, overlap:-after]
    proba[:, empty] = np.nan
    assert np.nanstd(proba, axis=(1, 2)).min() > 1e-3  # the network is not constant
    return proba


def assert_mask_follows(mask, proba):
    """Mask = most probable channel (= its value), MISSING (5) without data; near-ties left
    out."""
    empty = np.isnan(proba).all(0)
    assert (mask[empty] == 5).all() and empty.any()
    top = np.sort(proba[:, ~empty], axis=0)
    clear = (top[-1] - top[-2]) > 1e-4
    assert clear.mean() > 0.99
    expected = np.nanargmax(proba[:, ~empty], axis=0)
    np.testing.assert_array_equal(mask[~empty][clear], expected[clear])
    assert len(np.unique(expected)) >= 2


def test_predict_through_the_engine_equals_a_direct_call(tmp_path, cloudy_scene):
    path = tmp_path / "model.safetensors"
    small_checkpoint(path, maximum=[0.6] * 13, seed=1, **VARIED)
    model = xcloud.models.load("kappamask-l1c", weights=path)
    assert model.info.normalization.scale == (0.6,) * 13  # the checkpoint's, not the default
    tiles = np.random.default_rng(0).random((2, 13, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = torch.sigmoid(model.network.logits(torch.from_numpy(tiles))).numpy()
    np.testing.assert_allclose(model.predict_proba(tiles), expected, rtol=1e-6)
    options = {"model": "kappamask-l1c", "weights": path}
    proba = xcloud.predict(cloudy_scene, **options, output="proba")
    reference = direct_proba(model, cloudy_scene)
    np.testing.assert_allclose(proba.values, reference, atol=1e-5)
    mask = xcloud.predict(cloudy_scene, **options)
    assert mask.dtype == np.uint8 and mask.attrs["flag_meanings"].startswith("undefined clear")
    assert_mask_follows(mask.values, reference)


def test_lazy_chunks_equal_the_whole_image(tmp_path, cloudy_scene):
    path = tmp_path / "model.pt"
    small_checkpoint(path, seed=1, **VARIED)
    options = {"model": "kappamask-l1c", "weights": path, "tile_size": 64, "tile_overlap": 16,
               "halo": 66, "output": "proba"}
    whole = xcloud.predict(cloudy_scene, **options)
    lazy = xcloud.predict(cloudy_scene.chunk({"x": 96, "y": 96}), **options)
    assert isinstance(lazy.data, da.Array) and lazy.data.numblocks == (1, 2, 2)
    np.testing.assert_allclose(lazy.values, whole.values, atol=1e-6)
    assert np.isnan(whole.values[:, :20, :30]).all()
    assert np.nanstd(whole.values, axis=(1, 2)).min() > 1e-3


def test_l2a_with_aot_and_wvp_in_any_band_order(tmp_path, cloudy_scene):
    l2a = cloudy_scene.drop_vars(["B07", "B10"])
    network = small_checkpoint(tmp_path / "layout.pt", level="L2A", seed=1, **VARIED)
    order = [*range(7, 13), *range(7)]
    low, high = default_range("L2A")
    state = network.state_dict()
    state["encoder.0.0.0.weight"] = state["encoder.0.0.0.weight"][:, order]
    network.load_state_dict(state)
    save_checkpoint(tmp_path / "rotated.safetensors", network,
                    bands=[KAPPAMASK_L2A_BANDS[i] for i in order],
                    minimum=[low[i] for i in order], maximum=[high[i] for i in order],
                    level="L2A")
    probas = [xcloud.predict(l2a, model="kappamask-l2a", weights=tmp_path / name,
                             output="proba").values
              for name in ("layout.pt", "rotated.safetensors")]
    np.testing.assert_allclose(probas[0], probas[1], atol=1e-5)
    model = xcloud.models.load("kappamask-l2a", weights=tmp_path / "layout.pt")
    np.testing.assert_allclose(probas[0], direct_proba(model, l2a), atol=1e-5)
    mask = xcloud.predict(l2a, model="kappamask-l2a", weights=tmp_path / "rotated.safetensors")
    assert_mask_follows(mask.values, probas[0])


def test_an_xcloud_checkpoint_is_a_drop_in_for_the_published_weights(tmp_path, io):
    """The published file's arrays saved as an xcloud checkpoint predict the same."""
    path = need_data(f"{FIXTURES}/l2a_unet.hdf5")
    weights = read_keras_weights(path)
    network = KappaMaskUNet.from_config(KappaMaskConfig.from_keras_layers(weights.layers))
    network.load_keras_layers(weights.layers)
    low, high = default_range("L2A")
    save_checkpoint(tmp_path / "l2a.safetensors", network, bands=KAPPAMASK_L2A_BANDS,
                    minimum=low, maximum=high, level="L2A")
    published = xcloud.models.load("kappamask-l2a", weights=path)
    ours = xcloud.models.load("kappamask-l2a", weights=tmp_path / "l2a.safetensors")
    assert ours.info.normalization == published.info.normalization
    x = nchw(io["l2a_x"])
    np.testing.assert_array_equal(ours.predict_proba(x), published.predict_proba(x))
    assert Path(ours.info.weights_source).suffix == ".safetensors"
