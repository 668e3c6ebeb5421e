"""KappaMask: the published U-Net, its checkpoints and its registration in the engine."""

import dask.array as da
import numpy as np
import pytest
import torch

import xcloud
from xcloud.errors import MissingWeightsError, WeightsError
from xcloud.models.kappamask import (
    KAPPAMASK_L1C_BANDS,
    KAPPAMASK_L2A_BANDS,
    KappaMaskUNet,
    default_range,
    load_checkpoint,
    save_checkpoint,
)
from xcloud.synthetic import synthetic_scene

pytest.importorskip("safetensors")

SMALL = {"depth": 3, "filters": 8}
VARIED = {"head_channels": 0}  # random 2-channel ReLU heads are often dead: flat output


def keras_parameter_count(bands, classes, depth, filters, head=2):
    """Parameters of the published Keras layer list, counted layer by layer."""
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


def test_default_network_has_the_published_size():
    assert parameters(KappaMaskUNet(13)) == 31_038_609
    # one band, one class: the classic U-Net KappaMask derives from (zhixuhao/unet)
    assert parameters(KappaMaskUNet(1, n_classes=1)) == 31_031_685


@pytest.mark.parametrize("depth", [5, 6, 7])
@pytest.mark.parametrize("filters", [32, 64, 128])
def test_parameter_counts_of_the_paper_grid(depth, filters):
    with torch.device("meta"):
        network = KappaMaskUNet(14, depth=depth, filters=filters)
    assert parameters(network) == keras_parameter_count(14, 5, depth, filters)


def test_small_network_size_and_layout():
    network = KappaMaskUNet(13, **SMALL)
    assert parameters(network) == keras_parameter_count(13, 5, 3, 8) == 30_337  # by hand
    assert parameters(KappaMaskUNet(13, **SMALL, head_channels=0)) == 30_337 - 146 - 15 + 45


@pytest.mark.parametrize(("depth", "size"), [(5, (32, 48)), (6, (64, 32)), (7, (64, 128))])
def test_forward_shapes(depth, size):
    network = KappaMaskUNet(13, depth=depth, filters=4).eval()
    with torch.inference_mode():
        out = network(torch.rand(2, 13, *size))
    assert out.shape == (2, 5, *size)


def test_forward_with_batch_norm_and_six_classes():
    network = KappaMaskUNet(14, n_classes=6, filters=32, batch_norm=True).eval()
    with torch.inference_mode():
        assert network(torch.rand(1, 14, 32, 32)).shape == (1, 6, 32, 32)


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


def small_checkpoint(path, *, level="L1C", seed=0, maximum=None, bands=None, **config):
    torch.manual_seed(seed)
    layout = KAPPAMASK_L1C_BANDS if level == "L1C" else KAPPAMASK_L2A_BANDS
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
    assert meta.config == network.config
    assert meta.bands == KAPPAMASK_L1C_BANDS and meta.level == "L1C"
    assert meta.minimum == (0.0,) * 13 and meta.maximum == (0.5,) * 13
    assert meta.extra == {"epoch": 7, "history": [{"val_loss": 0.5}]}
    assert meta.xcloud_version == xcloud.__version__


def test_torch_checkpoint_is_a_plain_dict(tmp_path):
    small_checkpoint(tmp_path / "model.pt")
    content = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(content) == {"state_dict", "xcloud_kappamask"}
    assert isinstance(content["xcloud_kappamask"], str)
    assert all(isinstance(t, torch.Tensor) for t in content["state_dict"].values())


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
    ("level", "bands", "config", "message"),
    [
        ("L2A", KAPPAMASK_L2A_BANDS, {}, "saved for level L2A; use it with model='kappamask-l2a'"),
        ("L1C", KAPPAMASK_L2A_BANDS[1:], {}, r"missing: \['B10'\], not used: \['WVP'\]"),
        ("L1C", KAPPAMASK_L1C_BANDS, {"n_classes": 3}, "at least 5"),
    ],
)
def test_checkpoints_that_do_not_fit_the_registered_layout(tmp_path, level, bands, config,
                                                            message):
    small_checkpoint(tmp_path / "model.pt", level=level, bands=bands,
                     maximum=[1.0] * len(bands), **config)
    with pytest.raises(WeightsError, match=message):
        xcloud.models.load("kappamask-l1c", weights=tmp_path / "model.pt")


def test_registered_without_weights():
    assert {"kappamask-l1c", "kappamask-l2a"} <= set(xcloud.models.list())
    info = xcloud.models.get("kappamask-l2a").info
    assert info.bands == KAPPAMASK_L2A_BANDS and info.level == "L2A"
    assert (info.tile_size, info.tile_overlap, info.resolution) == (512, 32, 10.0)
    assert info.needs_weights_file and info.normalization.kind == "minmax"
    assert info.scheme.values == (1, 2, 3, 4) and info.scheme.nodata.value == 0
    # the predictor's maxima are in DN / 65535: AOT 256 DN = 0.256 (AOT is DN / 1000)
    assert info.normalization.scale[0] == pytest.approx(0.256, abs=1e-6)
    assert default_range("L1C")[1][1] == pytest.approx(0.326 * 6.5535)


def test_prediction_without_weights_says_how_to_get_them():
    with pytest.raises(MissingWeightsError, match=r"weights=PATH.*xcloud train"):
        xcloud.predict(synthetic_scene(32), model="kappamask-l1c")


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
    """Mask = most probable class (values 1-4), 0 without data; near-ties left out."""
    empty = np.isnan(proba).all(0)
    assert (mask[empty] == 0).all() and empty.any()
    top = np.sort(proba[:, ~empty], axis=0)
    clear = (top[-1] - top[-2]) > 1e-4
    assert clear.mean() > 0.99
    expected = np.nanargmax(proba[:, ~empty], axis=0) + 1
    np.testing.assert_array_equal(mask[~empty][clear], expected[clear])
    assert len(np.unique(expected)) >= 2


def test_predict_through_the_engine_equals_a_direct_call(tmp_path, cloudy_scene):
    path = tmp_path / "model.safetensors"
    small_checkpoint(path, maximum=[0.6] * 13, seed=1, **VARIED)
    model = xcloud.models.load("kappamask-l1c", weights=path)
    assert model.info.normalization.scale == (0.6,) * 13  # the checkpoint's, not the default
    tiles = np.random.default_rng(0).random((2, 13, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        logits = model.network(torch.from_numpy(tiles))
    expected = torch.softmax(logits[:, 1:5], dim=1).numpy()  # clear .. cloud
    np.testing.assert_allclose(model.predict_proba(tiles), expected, rtol=1e-6)
    options = {"model": "kappamask-l1c", "weights": path}
    proba = xcloud.predict(cloudy_scene, **options, output="proba")
    reference = direct_proba(model, cloudy_scene)
    np.testing.assert_allclose(proba.values, reference, atol=1e-5)
    mask = xcloud.predict(cloudy_scene, **options)
    assert mask.dtype == np.uint8 and mask.attrs["flag_meanings"].startswith("missing clear")
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
    np.testing.assert_allclose(np.nansum(whole.values, axis=0)[20:], 1.0, atol=1e-5)
    assert np.nanstd(whole.values, axis=(1, 2)).min() > 1e-3


def test_l2a_with_aot_and_wvp_in_any_band_order(tmp_path, cloudy_scene):
    l2a = cloudy_scene.drop_vars("B10")
    network = small_checkpoint(tmp_path / "layout.pt", level="L2A", seed=1, **VARIED)
    order = [*range(7, 14), *range(7)]
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


def test_only_the_torch_runtime(tmp_path):
    small_checkpoint(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="runtime must be 'auto' or 'torch'"):
        xcloud.models.load("kappamask-l1c", weights=tmp_path / "model.pt",
                           runtime="onnxruntime")


def test_missing_weights_fail_when_predict_is_called_not_at_compute():
    import xcloud
    from xcloud.errors import MissingWeightsError
    from xcloud.synthetic import synthetic_scene

    lazy = synthetic_scene(64, seed=0).chunk({"y": 32, "x": 32})
    with pytest.raises(MissingWeightsError, match="xcloud train"):
        xcloud.predict(lazy, model="kappamask-l1c")
