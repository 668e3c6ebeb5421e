"""SEnSeI-v2 as released: published folders load as they are and reproduce the authors' code.

References: /work/shared/data/fixtures/sensei_v2_published{,_deeplab} (PUBLISHED_FORMATS.md),
computed with aliFrancis/SEnSeIv2 eba151dc; tolerances from there.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

import xcloud
from xcloud.errors import BandError, MissingWeightsError, WeightsError
from xcloud.models import registry
from xcloud.models.segformer import segformer_current_key
from xcloud.models.sensei import (
    SENTINEL2_L1C_BANDS,
    band_descriptors,
    band_names,
    sensei_v2,
)
from xcloud.models.sensei_encoder import (
    DEFAULT_SENSEI_CONFIG,
    BandwiseTransformerLayer,
    FCLBlock,
    HeadSpec,
    SEnSeIv2,
    descriptor_vectors,
    released_quantiles,
)
from xcloud.models.sensei_published import (
    load_published,
    load_weights,
    read_published,
    save_checkpoint,
    segformer_spec,
)
from xcloud.synthetic import synthetic_scene

from .conftest import need_data

SEGFORMER = "fixtures/sensei_v2_published"
DEEPLAB = "fixtures/sensei_v2_published_deeplab"
CASES = ("s2_l1c_13", "s2_subset_4", "landsat8_11")
NAMES = {  # xcloud band names of each case, in channel order
    "s2_l1c_13": list(SENTINEL2_L1C_BANDS),
    "s2_subset_4": ["B02", "B03", "B04", "B08"],
    "landsat8_11": [f"landsat-8:B{i}" for i in range(1, 12)],
}
ATOL = {SEGFORMER: 1e-4, DEEPLAB: 2e-3}


class Fixture:
    """One fixture folder: meta, the model folder, io.npz."""

    def __init__(self, relative: str) -> None:
        self.root = need_data(relative)
        self.relative = relative
        meta = json.loads((self.root / "meta.json").read_text())
        self.name, self.variant = next(iter(meta["variants"].items()))
        self.folder = self.root / self.variant["folder"]
        with np.load(self.folder / "io.npz") as data:
            self.io = {k: data[k] for k in data.files}

    def descriptors(self, case: str) -> list[dict]:
        return self.variant["cases"][case]["descriptors"]


@pytest.fixture(scope="module", params=[SEGFORMER, DEEPLAB], ids=["segformer", "deeplab"])
def fixture(request) -> Fixture:
    return Fixture(request.param)


@pytest.fixture(scope="module")
def segformer() -> Fixture:
    return Fixture(SEGFORMER)


def four_class(proba: np.ndarray) -> np.ndarray:
    """The released '4-class' output: clear (0+1+2), thick (4), thin (3), shadow (5)."""
    return np.stack([proba[:, :3].sum(1), proba[:, 4], proba[:, 3], proba[:, 5]], axis=1)


# -- descriptors and blocks --------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_descriptor_vectors_equal_the_released_ones(fixture, case):
    expected = fixture.io[f"{case}_descriptor_vectors"]
    np.testing.assert_array_equal(descriptor_vectors(fixture.descriptors(case)), expected)
    np.testing.assert_array_equal(band_descriptors(NAMES[case]), expected)  # by name


def test_quantiles_are_torch_quantile():
    values = torch.rand(2, 3, 4099, generator=torch.Generator().manual_seed(0))
    q = [0.01, 0.1, 0.5, 0.9, 0.99]
    expected = torch.stack([torch.quantile(values, p, dim=2) for p in torch.tensor(q)], -1)
    assert torch.equal(released_quantiles(values, q), expected)


def test_fcl_skips_double_each_layer_as_released():
    torch.manual_seed(0)
    block = FCLBlock({"layer_sizes": [6, 5], "skips": True}, 4)
    x = torch.randn(3, 2, 4)
    expected = x
    for norm, linear in ((block.layers[0], block.layers[2]), (block.layers[4],
                                                              block.layers[6])):
        expected = 2 * linear(torch.relu(norm(expected)))
    torch.testing.assert_close(block(x), expected)
    assert [k for k in block.state_dict()] == [
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
        "layers.4.weight", "layers.4.bias", "layers.6.weight", "layers.6.bias"]


def test_attention_is_the_released_layer_run_on_one_image():
    """Same keys and result as nn.TransformerEncoderLayer(batch_first=False) fed (1, B, F);
    fed (2, B, F) the released layer mixes the two images, ours never does."""
    torch.manual_seed(0)
    released = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.2).eval()
    ours = BandwiseTransformerLayer(32, 4, 64, 0.2).eval()
    assert list(ours.state_dict()) == list(released.state_dict())
    ours.load_state_dict(released.state_dict())
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        alone = torch.cat([released(x[i:i + 1]) for i in range(2)])
        torch.testing.assert_close(ours(x), alone, atol=1e-5, rtol=1e-5)
        assert (released(x) - alone).abs().max() > 0.1  # the released batch effect


# -- published folders ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(fixture):
    return {case: xcloud.models.load("sensei-v2", weights=fixture.folder, bands=NAMES[case])
            for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_published_folder_reproduces_the_released_code(fixture, loaded, case):
    model, io = loaded[case], fixture.io
    proba = model.predict_proba(io[f"{case}_x"])
    assert proba.shape == io[f"{case}_probs_b1"].shape and proba.dtype == np.float32
    np.testing.assert_allclose(proba, io[f"{case}_probs_b1"], atol=ATOL[fixture.relative],
                               rtol=0)
    assert (proba.argmax(1) == io[f"{case}_classes7_b1"]).mean() >= 0.999
    assert (four_class(proba).argmax(1) == io[f"{case}_classes4_b1"]).mean() >= 0.999
    with torch.no_grad():
        x = torch.from_numpy(io[f"{case}_x"])
        features = model.network.senseiv2(x, fixture.descriptors(case))[1]
    np.testing.assert_allclose(features.numpy(), io[f"{case}_sensei_descriptors_b1"],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_a_batch_of_two_is_two_batches_of_one(fixture, loaded, case):
    """Unlike the released code (probs_b2 differs from probs_b1), images never mix."""
    model, x = loaded[case], fixture.io[f"{case}_x"]
    together = model.predict_proba(x)
    np.testing.assert_array_equal(together[1:], model.predict_proba(x[1:]))
    network = model.network
    with torch.no_grad():  # also the network itself, batched
        batched = torch.softmax(network(torch.from_numpy(x), fixture.descriptors(case)), 1)
    np.testing.assert_allclose(batched.numpy(), together, atol=5e-4, rtol=0)  # conv kernels
    released_effect = np.abs(fixture.io[f"{case}_probs_b2"] - fixture.io[f"{case}_probs_b1"])
    assert released_effect.max() > 0.03


def test_band_order_does_not_matter(fixture):
    names, x = NAMES["s2_l1c_13"], fixture.io["s2_l1c_13_x"]
    order = np.random.default_rng(0).permutation(len(names))
    shuffled = xcloud.models.load("sensei-v2", weights=fixture.folder,
                                  bands=[names[i] for i in order])
    reference = fixture.io["s2_l1c_13_probs_b1"]
    np.testing.assert_allclose(shuffled.predict_proba(x[:, order]), reference,
                               atol=ATOL[fixture.relative], rtol=0)


def test_descriptor_dicts_as_bands(segformer):
    descriptors = [{**d, "name": f"band{i}"} for i, d in
                   enumerate(segformer.descriptors("landsat8_11"))]
    model = xcloud.models.load("sensei-v2", weights=segformer.folder, bands=descriptors)
    assert model.info.bands == tuple(f"band{i}" for i in range(11))
    np.testing.assert_allclose(model.predict_proba(segformer.io["landsat8_11_x"]),
                               segformer.io["landsat8_11_probs_b1"], atol=1e-4, rtol=0)
    assert band_names([{"band_type": "DEM"}, "dem", "sentinel-1:vv", "blue", "landsat-9:b10"]
                      ) == ("descriptor0", "dem:dem", "sentinel-1:VV", "B02", "landsat-9:B10")
    for bad in (["B02", "blue"], ["landsat-7:B1"], ["B13"], [{"band_type": "radar"}]):
        with pytest.raises(BandError, match="bands="):
            band_descriptors(bad) if isinstance(bad[0], dict) else band_names(bad)


def test_every_form_of_weights_loads_and_recovery_keys_are_dropped(segformer):
    folder = segformer.folder
    for weights in (folder, folder / "config.yaml", folder / "weights.pt"):
        network, loaded = load_weights(weights)
        assert loaded.kind == "published" and loaded.name == segformer.name
        assert loaded.dropped == tuple(segformer.variant["recovery_module"]["state_dict_keys"])
        assert not network.training and network.recovery_module is None
    assert sum(p.numel() for p in network.parameters()) == 1_309_445
    model = xcloud.models.load("sensei-v2", weights=folder)
    assert "dropped training-only recovery_module" in model.info.weights_source
    assert model.info.bands == SENTINEL2_L1C_BANDS
    config = {"preconcatenation_layer_sizes": [64], "postconcatenation_layer_sizes": [32],
              "sampling_rate": 4}
    kept, info = load_published(folder, recovery=config)  # kept to fine-tune: same outputs
    assert info.dropped == () and kept.recovery_module is not None
    x = torch.from_numpy(segformer.io["s2_subset_4_x"])
    with torch.no_grad():
        torch.testing.assert_close(kept(x, segformer.descriptors("s2_subset_4")),
                                   network(x, segformer.descriptors("s2_subset_4")))


def _copy(fixture: Fixture, tmp_path, *, beside: bool = False):
    """The model folder copied (with sensei-configs two levels up, or beside config.yaml)."""
    folder = tmp_path / "hf" / "full-models" / fixture.name
    shutil.copytree(fixture.folder, folder)
    configs = folder if beside else tmp_path / "hf" / "sensei-configs"
    configs.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixture.root / "sensei-configs" / "senseiv2-test.yaml", configs)
    return folder


def test_sensei_config_is_found_by_basename(segformer, tmp_path):
    folder = _copy(segformer, tmp_path / "a", beside=True)
    assert read_published(folder).sensei_config_path == folder / "senseiv2-test.yaml"
    assert read_published(folder).sensei_config == {
        k: DEFAULT_SENSEI_CONFIG[k] for k in ("descriptors", "blocks")}
    (folder / "senseiv2-test.yaml").unlink()
    with pytest.raises(MissingWeightsError, match=r"senseiv2-test\.yaml"):
        read_published(folder)


def test_incomplete_or_foreign_weights_are_refused(segformer, tmp_path):
    folder = _copy(segformer, tmp_path)
    state = torch.load(folder / "weights.pt", weights_only=True)
    needed = ["senseiv2.blocks.3.norm.running_var", "segmenter.decode_head.classifier.weight"]
    torch.save({k: v for k, v in state.items() if k not in needed}, folder / "weights.pt")
    with pytest.raises(WeightsError, match="lacks 2 tensors") as error:
        load_weights(folder)
    assert all(name in str(error.value) for name in needed)
    torch.save({**state, "senseiv2.blocks.9.weight": torch.zeros(1)}, folder / "weights.pt")
    with pytest.raises(WeightsError, match=r"senseiv2\.blocks\.9\.weight"):
        load_weights(folder)
    torch.save({**state, "senseiv2.blocks.1.layers.2.weight": torch.zeros(3, 3)},
               folder / "weights.pt")
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(folder)
    (folder / "weights.pt").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="weights-only"):
        load_weights(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "MODEL_TYPE": "NN"}))
    with pytest.raises(WeightsError, match="MODEL_TYPE"):
        load_weights(folder)


def test_registry_entries(segformer):
    for name in ("sensei-v2", "sensei-v2-segformer-b2-alldata-ambiguous"):
        entry = registry.get(name)
        info = entry.info
        assert info.needs_weights_file and info.bands == SENTINEL2_L1C_BANDS
        assert info.scheme.names == ("land", "water", "snow", "thin_cloud", "thick_cloud",
                                     "cloud_shadow", "no_data")
        assert info.scheme.nodata.value == 6
        with pytest.raises(MissingWeightsError, match=r"weights=(FOLDER|PATH)"):
            entry.load()
        with pytest.raises(ValueError, match="runtime="):
            entry.load(weights=segformer.folder, runtime="onnxruntime")
    with pytest.raises(WeightsError, match="SEnSeIv2-SegFormerB2-alldata-ambiguous"):
        registry.load("sensei-v2-segformer-b2-alldata-ambiguous", weights=segformer.folder)


# -- the full-size published layouts ---------------------------------------------------------

@pytest.mark.parametrize("size", ["segformer_b2", "segformer_b0", "deeplab_resnet34"])
def test_full_size_layouts_map_key_by_key(segformer, size):
    layout = json.loads((segformer.root / "layout_full_size.json").read_text())[size]
    if size.startswith("segformer"):
        head = segformer_spec(layout["segformer_config"], segformer.folder)
    else:
        head = HeadSpec("deeplab", encoder="resnet34")
    with torch.device("meta"):
        network = SEnSeIv2(DEFAULT_SENSEI_CONFIG, head)
    ours = {k: tuple(v.shape) for k, v in network.state_dict().items()}

    def current(key: str) -> str:
        return "segmenter." + segformer_current_key(key.removeprefix("segmenter.")) \
            if size.startswith("segformer") and key.startswith("segmenter.") else key

    published = {current(row["key"]): tuple(row["shape"]) for row in layout["layout"]}
    assert len(published) == layout["n_keys"] == len(ours)
    assert published == ours
    assert sum(p.numel() for p in network.parameters()) == layout["n_params"]


# -- xcloud checkpoints ----------------------------------------------------------------------

TINY_SEGFORMER = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 16, 32],
                  "num_attention_heads": [1, 1, 1, 1], "decoder_hidden_size": 16}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_xcloud_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    network = sensei_v2(HeadSpec("segformer", TINY_SEGFORMER),
                        recovery={"preconcatenation_layer_sizes": [8], "sampling_rate": 2})
    path = save_checkpoint(tmp_path / f"m{suffix}", network, bands=("B04", "B03", "B02"),
                           extra={"epoch": 3})
    model = xcloud.models.load("sensei-v2", weights=path)
    assert model.info.bands == ("B04", "B03", "B02") and model.loaded.extra == {"epoch": 3}
    assert model.network.recovery_module is not None
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        vectors = torch.from_numpy(band_descriptors(["B04", "B03", "B02"]))[None]
        expected = torch.softmax(network.eval()(torch.from_numpy(x), vectors), 1).numpy()
    np.testing.assert_allclose(model.predict_proba(x), expected, atol=1e-6, rtol=0)
    training = network.train().forward_with_recovery(torch.from_numpy(x).expand(2, -1, -1, -1),
                                                     vectors)
    assert training[0].shape == (2, 7, 32, 32) and float(training[1].detach()) > 0


def test_deeplab_takes_sizes_that_are_not_multiples_of_16():
    proba = xcloud.models.load("sensei-v2", weights=need_data(DEEPLAB) / "full-models" /
                               "SEnSeIv2-DeepLabv3plus-mobilenet_v2-test", bands=["B02", "B03",
                                                                               "B04", "B08"])
    out = proba.predict_proba(np.full((1, 4, 40, 36), 0.2, np.float32))
    assert out.shape == (1, 7, 40, 36)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)


# -- the scene path --------------------------------------------------------------------------

def released_sliding_window(model, scene: np.ndarray, stride: int, patch: int) -> np.ndarray:
    """The released SlidingWindow arithmetic (reflect-padded borders, its always-odd
    extra pixel, sums / (count + 1e-6)) around xcloud's predict_proba, batch size 1."""
    height, width = scene.shape[1:]
    offsets = []
    for size in (height, width):
        steps = (size - stride) // stride + 1
        low = (patch + steps * stride - size) // 2
        offsets.append((low, low + 1))
    padded = np.pad(scene, ((0, 0), *offsets), mode="reflect")
    total = np.zeros((7, *padded.shape[1:]), np.float32)
    count = np.zeros((1, *padded.shape[1:]), np.float32)
    for y in range(0, height, stride):
        for x in range(0, width, stride):
            tile = padded[None, :, y:y + patch, x:x + patch]
            total[:, y:y + patch, x:x + patch] += model.predict_proba(tile)[0]
            count[:, y:y + patch, x:x + patch] += 1
    (top, bottom), (left, right) = offsets
    total, count = (a[:, top:-bottom, left:-right] for a in (total, count))
    return total / (count + 1e-6)


def test_scene_as_the_released_sliding_window(segformer):
    model = xcloud.models.load("sensei-v2", weights=segformer.folder)
    io = segformer.io
    mask = four_class(released_sliding_window(model, io["scene_x"], 32, 64)[None])[0]
    np.testing.assert_allclose(mask, io["scene_mask4_bs1"], atol=1e-4, rtol=0)
    assert (mask.argmax(0) == io["scene_classes4_bs1"]).mean() >= 0.999


def test_scene_through_the_engine(segformer):
    """xcloud's own tiling (64 px tiles, 32 px overlap) against the released one: both
    average overlapping 64 px patches, but on other lattices, so the per-patch percentiles
    differ; measured agreement is documented in docs/models/sensei-v2.md."""
    io = segformer.io
    scene = synthetic_scene(100).isel(x=slice(0, 90))
    for i, band in enumerate(SENTINEL2_L1C_BANDS):
        scene[band] = (("y", "x"), io["scene_x"][i])
    proba = xcloud.predict(scene, model="sensei-v2", weights=segformer.folder, tile_size=64,
                           tile_overlap=32, output="proba").values
    assert proba.shape == (7, 100, 90)
    np.testing.assert_allclose(proba.sum(0), 1.0, atol=1e-5)
    agreement = (four_class(proba[None])[0].argmax(0) == io["scene_classes4_bs1"]).mean()
    # the fixture's random weights make classes hinge on each patch's percentiles: the
    # released sliding window itself, its lattice moved by 8 px, agrees with itself only so
    # well (measured 76.3 %); xcloud's lattice must do no worse (measured 78.9 %)
    model = xcloud.models.load("sensei-v2", weights=segformer.folder)
    moved = released_sliding_window(model, io["scene_x"][:, 8:, 8:], 32, 64)
    baseline = (four_class(moved[None])[0].argmax(0) == io["scene_classes4_bs1"][8:, 8:]).mean()
    assert 0.7 <= baseline <= agreement, (baseline, agreement)


def released_offsets(size: int, stride: int, patch: int) -> tuple[int, int]:
    """The reflected border the released SlidingWindow adds before and after an axis."""
    steps = (size - stride) // stride + 1
    low = (patch + steps * stride - size) // 2
    return low, low + 1


def test_engine_with_the_released_lattice_gives_the_authors_scene_mask(segformer):
    """The released tiling through xcloud's engine: the scene reflect-padded as SlidingWindow
    pads it, tiles of 64 px every 32 px from the padded corner, overlaps averaged
    (tile_blend="mean"). Where the engine's tiles are the released windows (all but the last
    rows and columns, where the engine adds one more tile past the padded edge), the masks
    are the authors' (the engine also runs the tile just before the padded corner, so the
    first rows and columns are left out too)."""
    io = segformer.io
    (top, bottom), (left, right) = (released_offsets(n, 32, 64) for n in io["scene_x"].shape[1:])
    padded = np.pad(io["scene_x"], ((0, 0), (top, bottom), (left, right)), mode="reflect")
    scene = synthetic_scene(max(padded.shape[1:])).isel(y=slice(0, padded.shape[1]),
                                                        x=slice(0, padded.shape[2]))
    for i, band in enumerate(SENTINEL2_L1C_BANDS):
        scene[band] = (("y", "x"), padded[i])
    proba = xcloud.predict(scene.chunk({"y": 64, "x": 64}), model="sensei-v2",
                           weights=segformer.folder, output="proba", tile_size=64,
                           tile_overlap=32, tile_anchor=0, tile_blend="mean", boundary="none")
    proba = proba.values[:, top:-bottom, left:-right]
    # rows/columns that only the released windows cover: after the engine's extra tile at
    # -32 and before its extra tile at the last multiple of 32 that the released loop
    # (range(0, size, stride)) does not run
    height, width = io["scene_x"].shape[1:]
    rows = slice(32 - top, range(0, height, 32)[-1] + 32 - top)
    cols = slice(32 - left, range(0, width, 32)[-1] + 32 - left)
    same = (slice(None), rows, cols)
    mask = four_class(proba[None])[0]
    np.testing.assert_allclose(mask[same], io["scene_mask4_bs1"][same], atol=1e-4, rtol=0)
    equal = mask.argmax(0)[same[1:]] == io["scene_classes4_bs1"][same[1:]]
    assert equal.mean() >= 0.999 and equal.size >= 0.6 * mask[0].size, equal.size


# -- the published 4-class models: SEnSeIv2-DeepLabv3-S2-unambiguous and the baseline ---------
# No authors' fixtures exist for these two: the folders are built as the authors' code lays
# them out (config.yaml in their format, weights.pt = torch.save of a plain dict of tensors,
# keys from xcloud's network with random values).

DEEPLAB4 = "sensei-v2-deeplabv3-s2-unambiguous"
BASELINE = "sensei-v2-baseline-segformer-b2-s2-unambiguous"
FOUR_CLASSES = ("clear", "thick_cloud", "thin_cloud", "cloud_shadow")
FOUR_CLASS_MEANINGS = "clear thick_cloud thin_cloud cloud_shadow no_data"


def randomised(state: dict) -> dict:
    """A state dict with random values everywhere: the network's own random initialisation
    for weight matrices and kernels, random 1-d parameters and batch-norm statistics."""
    generator = torch.Generator().manual_seed(1)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point() or value.ndim > 1:
            out[key] = value.clone()
        elif key.endswith(("running_var", "weight")):  # variances, norm scales
            out[key] = 0.5 + torch.rand(value.shape, generator=generator)
        else:  # biases, running means
            out[key] = 0.1 * torch.randn(value.shape, generator=generator)
    return out


def authors_folder(root, name: str, config: dict, state: dict, *, sensei: dict | None = None):
    """hf_models/full-models/<name>/{config.yaml, weights.pt} (+ sensei-configs/)."""
    folder = root / "hf_models" / "full-models" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"NAME": name, **config},
                                                       sort_keys=False))
    torch.save(dict(state), folder / "weights.pt")
    if sensei is not None:
        configs = root / "hf_models" / "sensei-configs"
        configs.mkdir(parents=True, exist_ok=True)
        (configs / "senseiv2-medium.yaml").write_text(yaml.safe_dump(sensei))
    return folder


DEEPLAB4_CONFIG = {"MODEL_TYPE": "DeepLabv3+", "DEEPLAB_CONFIG": "resnet50",
                   "SEnSeIv2": "hf_models/sensei-configs/senseiv2-medium.yaml", "CLASSES": 4,
                   "PATCH_SIZE": 256}


@pytest.fixture(scope="module")
def deeplab4(tmp_path_factory):
    """The published 4-class DeepLab folder's layout (senseiv2-medium is not available
    offline: the paper's sensei config stands in under its name) and the network written."""
    torch.manual_seed(0)
    network = sensei_v2(HeadSpec("deeplab", encoder="resnet50"), n_classes=4)
    state = randomised(network.state_dict())
    network.load_state_dict(state)
    root = tmp_path_factory.mktemp("deeplab4")
    folder = authors_folder(root, "SEnSeIv2-DeepLabv3-S2-unambiguous", DEEPLAB4_CONFIG, state,
                            sensei=DEFAULT_SENSEI_CONFIG)
    return folder, network.eval(), state


def test_deeplab_4_class_loads_every_key_and_gives_4_channels(deeplab4):
    folder, network, state = deeplab4
    model = xcloud.models.load(DEEPLAB4, weights=folder)
    assert model.info.scheme.names == FOUR_CLASSES and model.info.scheme.nodata.value == 255
    assert model.info.bands == SENTINEL2_L1C_BANDS  # the released Sentinel-2 loader's order
    assert model.network.head_spec.encoder == "resnet50" and model.network.n_classes == 4
    # the paper's sensei config (341,118) + DeepLabV3+ resnet50 on 32 channels, 4 classes
    # (26,769,300: tests/test_deeplabv3plus.py); 444 keys, 379 of them segmenter.*
    assert sum(p.numel() for p in model.network.parameters()) == 341_118 + 26_769_300
    assert len(state) == 444 and sum(k.startswith("segmenter.") for k in state) == 379
    loaded = model.network.state_dict()
    assert list(loaded) == list(state)  # every key of weights.pt used, none left untouched
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    x = np.random.default_rng(0).random((2, 13, 40, 36), dtype=np.float32) * 0.4
    proba = model.predict_proba(x)
    assert proba.shape == (2, 4, 40, 36) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    vectors = torch.from_numpy(band_descriptors(SENTINEL2_L1C_BANDS))[None]
    with torch.no_grad():
        expected = [torch.softmax(network(torch.from_numpy(x[i:i + 1]), vectors), 1)
                    for i in range(2)]
    np.testing.assert_allclose(proba, torch.cat(expected).numpy(), atol=1e-5, rtol=0)
    assert proba.std(axis=(2, 3)).max() > 0.05  # not a constant: the check above has teeth


def test_deeplab_4_class_entries_refuse_the_wrong_folder(deeplab4, segformer, tmp_path):
    folder, _, state = deeplab4
    with pytest.raises(WeightsError, match=f"4-class model.*model='{DEEPLAB4}'"):
        xcloud.models.load("sensei-v2", weights=folder)  # 7 classes: would give wrong shapes
    # a 7-class folder under the 4-class model's NAME
    seven = _copy(segformer, tmp_path / "seven")
    config = yaml.safe_load((seven / "config.yaml").read_text())
    (seven / "config.yaml").write_text(yaml.safe_dump(
        {**config, "NAME": "SEnSeIv2-DeepLabv3-S2-unambiguous"}))
    with pytest.raises(WeightsError, match=r"7-class model.*model='sensei-v2'"):
        xcloud.models.load(DEEPLAB4, weights=seven)
    with pytest.raises(WeightsError, match="not 'SEnSeIv2-DeepLabv3-S2-unambiguous'"):
        xcloud.models.load(DEEPLAB4, weights=segformer.folder)
    # a key set that does not match: one missing, one foreign
    key = "segmenter.encoder.layer4.2.conv3.weight"
    for broken, message in (({k: v for k, v in state.items() if k != key}, "lacks 1 tensors"),
                            ({**state, "segmenter.encoder.fc.weight": torch.zeros(4, 2048)},
                             r"segmenter\.encoder\.fc\.weight")):
        other = authors_folder(tmp_path / message[:5].strip(), folder.name, DEEPLAB4_CONFIG,
                               broken, sensei=DEFAULT_SENSEI_CONFIG)
        with pytest.raises(WeightsError, match=message):
            xcloud.models.load(DEEPLAB4, weights=other)
    resnet101 = {**DEEPLAB4_CONFIG, "DEEPLAB_CONFIG": "resnet101"}
    other = authors_folder(tmp_path / "r101", folder.name, resnet101, state,
                           sensei=DEFAULT_SENSEI_CONFIG)
    with pytest.raises(WeightsError, match="DEEPLAB_CONFIG 'resnet101'"):
        xcloud.models.load(DEEPLAB4, weights=other)


def test_deeplab_4_class_mask_through_the_engine(deeplab4):
    folder, _, _ = deeplab4
    scene = synthetic_scene(48)
    mask = scene.cloudmask.predict(model=DEEPLAB4, weights=folder, tile_size=32,
                                   tile_overlap=8)
    assert mask.attrs["flag_meanings"] == FOUR_CLASS_MEANINGS
    assert mask.attrs["flag_values"] == [0, 1, 2, 3, 255] and mask.shape == (48, 48)
    assert set(np.unique(mask.values)) <= {0, 1, 2, 3}
    proba = xcloud.predict(scene, model=DEEPLAB4, weights=folder, tile_size=32,
                           tile_overlap=8, output="proba")
    assert proba["class"].values.tolist() == list(FOUR_CLASSES)
    np.testing.assert_allclose(proba.values.sum(0), 1.0, atol=1e-5)


def legacy_segformer_b2_keys(root) -> list[str]:
    """The ``segmenter.*`` keys of a published SegFormer-B2 (transformers 4 names, from the
    full-size layout of the authors' code)."""
    layout = json.loads((root / "layout_full_size.json").read_text())["segformer_b2"]
    return [row["key"] for row in layout["layout"] if row["key"].startswith("segmenter.")]


BASELINE_CONFIG = {"MODEL_TYPE": "Segformer", "SEGFORMER_CONFIG": "nvidia/mit-b2",
                   "NUM_CHANNELS": 13, "CLASSES": 4, "PATCH_SIZE": 256}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, segformer):
    """The published baseline's layout: SegFormer-B2 on 13 bands, 4 classes, its
    ``segmenter.*`` keys named as the authors' transformers wrote them."""
    from xcloud.models.sensei_encoder import BaselineNetwork

    torch.manual_seed(0)
    network = BaselineNetwork(segformer_spec("nvidia/mit-b2", segformer.folder), 13,
                              n_classes=4)
    ours = randomised(network.state_dict())
    network.load_state_dict(ours)
    legacy = legacy_segformer_b2_keys(segformer.root)
    renamed = {key: "segmenter." + segformer_current_key(key.removeprefix("segmenter."))
               for key in legacy}
    assert sorted(renamed.values()) == sorted(ours)  # the same tensors, the authors' names
    state = {key: ours[current] for key, current in renamed.items()}
    root = tmp_path_factory.mktemp("baseline")
    folder = authors_folder(root, "SegFormerB2-S2-unambiguous", BASELINE_CONFIG, state)
    return folder, network.eval(), state


def test_baseline_loads_every_key_and_runs_as_released(baseline):
    folder, network, state = baseline
    model = xcloud.models.load(BASELINE, weights=folder)
    assert model.info.scheme.names == FOUR_CLASSES and model.info.bands == SENTINEL2_L1C_BANDS
    assert model.network.in_channels == 13 and model.network.n_classes == 4
    # the fixture's full-size SEnSeI-v2 + SegFormer-B2 (27,784,069), less SEnSeI-v2 (341,118),
    # less 19 input channels of the 7x7x64 patch embedding, less 3 classes of the 768-wide
    # classifier
    n_parameters = 27_784_069 - 341_118 - 19 * 7 * 7 * 64 - 3 * (768 + 1)
    assert sum(p.numel() for p in model.network.parameters()) == n_parameters == 27_381_060
    loaded = model.network.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(loaded.values(), network.state_dict().values(),
                                                 strict=True))
    assert len(loaded) == len(state) == 380  # SegFormer-B2's segmenter.*: every key used
    x = np.random.default_rng(1).random((1, 13, 48, 40), dtype=np.float32) * 0.5
    x[0, 3, 5, 7] = np.nan  # read as 0, as the released pipeline's missing pixels
    proba = model.predict_proba(x)
    assert proba.shape == (1, 4, 48, 40)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    # the released FullModel with senseiv2=None: logits at 1/4, bilinear
    # (align_corners=False) to the input size, softmax
    with torch.no_grad():
        logits = network.segmenter(torch.from_numpy(np.nan_to_num(x)))
        assert logits.shape[-2:] == (12, 10)
        expected = torch.softmax(torch.nn.functional.interpolate(
            logits, size=(48, 40), mode="bilinear", align_corners=False), 1)
    np.testing.assert_allclose(proba, expected.numpy(), atol=1e-5, rtol=0)
    assert proba.std(axis=(2, 3)).max() > 0.01  # not a constant (measured 0.028)
    with pytest.raises(BandError, match=r"\(N, 13, H, W\)"):
        model.predict_proba(x[:, :4])


def test_baseline_entries_refuse_the_wrong_folder(baseline, segformer, tmp_path):
    folder, _, state = baseline
    with pytest.raises(WeightsError, match=f"without SEnSeI-v2.*model='{BASELINE}'"):
        xcloud.models.load("sensei-v2", weights=folder)
    with pytest.raises(WeightsError, match="names a SEnSeIv2 config"):
        xcloud.models.load(BASELINE, weights=segformer.folder)
    key = "segmenter.decode_head.classifier.weight"
    missing = authors_folder(tmp_path / "m", folder.name, BASELINE_CONFIG,
                             {k: v for k, v in state.items() if k != key})
    with pytest.raises(WeightsError, match=rf"lacks 1 tensors.*{key}"):
        xcloud.models.load(BASELINE, weights=missing)
    foreign = authors_folder(tmp_path / "f", folder.name, BASELINE_CONFIG,
                             {**state, "senseiv2.blocks.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"senseiv2\.blocks\.0\.weight"):
        xcloud.models.load(BASELINE, weights=foreign)
    # a 7-class baseline (tiny SegFormer, local SEGFORMER_CONFIG folder) is not this model
    tiny = {**TINY_SEGFORMER, "num_channels": 13, "num_labels": 7}
    from xcloud.models.sensei_encoder import BaselineNetwork

    seven = BaselineNetwork(HeadSpec("segformer", TINY_SEGFORMER), 13, n_classes=7)
    other = authors_folder(tmp_path / "7", folder.name, {
        **BASELINE_CONFIG, "SEGFORMER_CONFIG": "tiny", "CLASSES": 7}, seven.state_dict())
    (other / "tiny").mkdir()
    (other / "tiny" / "config.json").write_text(json.dumps(tiny))
    with pytest.raises(WeightsError, match=f"7-class model, but model='{BASELINE}' has 4"):
        xcloud.models.load(BASELINE, weights=other)
    with pytest.raises(WeightsError, match="NUM_CHANNELS"):
        no_channels = authors_folder(tmp_path / "n", folder.name, {
            k: v for k, v in BASELINE_CONFIG.items() if k != "NUM_CHANNELS"}, state)
        xcloud.models.load(BASELINE, weights=no_channels)
    with pytest.raises(BandError, match="takes 13 bands"):
        xcloud.models.load(BASELINE, weights=folder, bands=["B02", "B03", "B04"])


def test_baseline_mask_through_the_engine(baseline):
    folder, _, _ = baseline
    mask = synthetic_scene(48).cloudmask.predict(model=BASELINE, weights=folder, tile_size=32,
                                                  tile_overlap=8)
    assert mask.attrs["flag_meanings"] == FOUR_CLASS_MEANINGS and mask.shape == (48, 48)
    assert set(np.unique(mask.values)) <= {0, 1, 2, 3}
