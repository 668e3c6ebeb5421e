"""SEnSeI-v2: descriptors, band tables, the permutation-invariant encoder, heads, checkpoints,
registered models and prediction through the engine."""

import math

import numpy as np
import pytest
import torch

import xcloud
from xcloud.data.bands import SENTINEL2_BANDS
from xcloud.errors import BandError, MissingWeightsError, WeightsError
from xcloud.evaluation.schemes import scheme_of_model
from xcloud.models import registry
from xcloud.models.sensei import (
    DESCRIPTOR_SIZE,
    FREQUENCIES,
    SENSOR_BANDS,
    SENTINEL2_L1C_BANDS,
    SEnSeIv2Config,
    SEnSeIv2Encoder,
    SensorBand,
    band_descriptor,
    band_descriptors,
    load_checkpoint,
    nan_percentiles,
    save_checkpoint,
    sensei_v2,
    sensei_v2_entry,
    sensor_band,
    wavelength_encoding,
)
from xcloud.synthetic import synthetic_scene

TINY = {"descriptor_layers": (32, 32), "attention_heads": 2, "feedforward": 32,
        "embedding_channels": 8, "embedding_hidden": (16,), "decoder_hidden": 8}

BAND_SETS = {
    "sentinel-2": list(SENTINEL2_L1C_BANDS),
    "rgb": ["B04", "B03", "B02"],
    "rgb+cirrus": ["B04", "B03", "B02", "B10"],
    "B05-B12 without B10": ["B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
    "landsat-8": [f"landsat-8:B{i}" for i in range(1, 12)],
    "landsat-9 without panchromatic": [f"landsat-9:B{i}" for i in (1, 2, 3, 4, 5, 6, 7, 10)],
    "sentinel-2+sar+dem": [*SENTINEL2_L1C_BANDS, "VV", "VH", "angle", "DEM"],
}


def encoding(wavelength):
    s = math.log10(wavelength - 300) - 2
    return np.array([math.sin(s * 10000 ** (-2 * i / 32)) if i % 2 == 0
                     else math.cos(s * 10000 ** (-2 * i / 32)) for i in range(32)])


def descriptors_of(bands):
    return torch.from_numpy(band_descriptors(bands))[None]


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    return SEnSeIv2Encoder(SEnSeIv2Config(**TINY)).eval()


def tiny_model(head="segformer-b0", *, seed=0):
    torch.manual_seed(seed)
    return sensei_v2(head, **TINY).eval()


def image_of(n_bands, *, n=2, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, n_bands, size, size), generator=generator) * 0.5


# -- descriptors -------------------------------------------------------------------------------

def test_wavelength_encoding_is_log_scaled_with_32_frequencies():
    assert FREQUENCIES.shape == (32,)
    np.testing.assert_allclose(FREQUENCIES[[0, 1, 16, 31]],
                               [1.0, 10000 ** (-1 / 16), 1e-4, 10000 ** (-62 / 32)])
    # 400 nm: log10(100) - 2 = 0, so the sines are 0 and the cosines 1
    np.testing.assert_allclose(wavelength_encoding(400.0), [0.0, 1.0] * 16, atol=1e-12)
    # 1300 nm: log10(1000) - 2 = 1
    assert wavelength_encoding(1300.0)[0] == pytest.approx(math.sin(1.0))
    assert wavelength_encoding(1300.0)[3] == pytest.approx(math.cos(10000 ** (-6 / 32)))
    np.testing.assert_allclose(wavelength_encoding(842.5), encoding(842.5), atol=1e-12)


def test_descriptor_of_a_sentinel2_band():
    blue = band_descriptor("blue")
    assert blue.shape == (DESCRIPTOR_SIZE,) == (74,) and blue.dtype == np.float32
    np.testing.assert_allclose(blue[:32], encoding(459), atol=1e-6)
    np.testing.assert_allclose(blue[32:64], encoding(525), atol=1e-6)
    np.testing.assert_array_equal(blue[64:], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(band_descriptor(SENTINEL2_BANDS["B02"]), blue)
    assert not np.allclose(band_descriptor("B03")[:64], blue[:64])


@pytest.mark.parametrize(("name", "minimum", "maximum", "flags"), [
    ("VV", 1, 0, [0, 1, 0, 0]),
    ("VH", 0, 1, [0, 1, 0, 0]),
    ("angle", 1, 1, [0, 1, 0, 0]),
    ("DEM", 0, 0, [0, 0, 1, 0]),
])
def test_sar_and_dem_reuse_the_wavelength_slots(name, minimum, maximum, flags):
    descriptor = band_descriptor(name)
    np.testing.assert_array_equal(descriptor[:32], np.full(32, minimum))
    np.testing.assert_array_equal(descriptor[32:64], np.full(32, maximum))
    np.testing.assert_array_equal(descriptor[64:68], flags)
    np.testing.assert_array_equal(descriptor[68:], 0)


def test_landsat_thermal_bands_have_wavelengths_and_a_thermal_flag():
    thermal = band_descriptor("landsat-8:B10")
    np.testing.assert_allclose(thermal[:32], encoding(10600), atol=1e-6)
    np.testing.assert_allclose(thermal[32:64], encoding(11190), atol=1e-6)
    np.testing.assert_array_equal(thermal[64:68], [1, 0, 0, 1])
    np.testing.assert_array_equal(band_descriptor("landsat-9:B4")[64:68], [1, 0, 0, 0])
    stacked = band_descriptors(["B2", "B10"], sensor="landsat-8")
    np.testing.assert_array_equal(stacked[1], thermal)
    assert not np.array_equal(stacked[0], band_descriptor("B02"))  # Landsat's B2 is not S2's


def test_band_tables():
    s2 = SENSOR_BANDS["sentinel-2"]
    assert tuple(s2) == SENTINEL2_L1C_BANDS and len(s2) == 13
    assert (s2["B11"].wavelength_min, s2["B11"].wavelength_max) == (1568, 1659)
    landsat = SENSOR_BANDS["landsat-8"]
    assert list(landsat) == [f"B{i}" for i in range(1, 12)]
    assert SENSOR_BANDS["landsat-9"] == landsat
    assert [b.kind for b in landsat.values()].count("thermal") == 2
    assert set(SENSOR_BANDS["sentinel-1"]) == {"VV", "VH", "angle"}
    assert sensor_band("B1") is s2["B01"] and sensor_band("vh").kind == "sar-vh"
    assert sensor_band("landsat-8:B9").wavelength_min == 1360
    assert sensor_band("swir16", sensor="sentinel-2") is s2["B11"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: sensor_band("B99"), "unknown band"),
    (lambda: sensor_band("landsat-8:B12"), "has no band"),
    (lambda: sensor_band("modis:B1"), "unknown sensor"),
    (lambda: band_descriptor("AOT"), "no wavelengths|unknown band"),
    (lambda: SensorBand("X", "sar-vv", 500, 600), "takes no wavelengths"),
    (lambda: SensorBand("X", "reflectance", 250, 600), "300 nm"),
    (lambda: SensorBand("X", "lidar"), "kinds"),
])
def test_bad_bands_are_refused(call, message):
    with pytest.raises(BandError, match=message):
        call()


# -- percentiles -------------------------------------------------------------------------------

def test_percentiles_match_numpy_and_ignore_nan():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 3, 9, 7)).astype(np.float32)
    values[0, 1, :4] = np.nan
    values[1, 2, 2, 2] = np.inf
    values[1, 0] = np.nan  # a band without data
    stats = nan_percentiles(torch.from_numpy(values), (1, 10, 50, 90, 99)).numpy()
    finite = np.where(np.isfinite(values), values, np.nan).reshape(2, 3, -1)
    for image, band in [(0, 0), (0, 1), (1, 1), (1, 2)]:
        expected = np.nanpercentile(finite[image, band], [1, 10, 50, 90, 99])
        np.testing.assert_allclose(stats[image, band], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats[1, 0], 0.0)


def test_nan_pixels_are_left_out_of_the_percentiles_and_the_embedding():
    encoder = tiny_encoder()
    image = image_of(5, size=24)
    padded = torch.cat([image, torch.full((2, 5, 24, 8), torch.nan)], dim=-1)
    with torch.no_grad():
        plain = encoder(image, descriptors_of(BAND_SETS["rgb+cirrus"] + ["B11"]))
        with_nan = encoder(padded, descriptors_of(BAND_SETS["rgb+cirrus"] + ["B11"]))
        with_zeros = encoder(torch.nan_to_num(padded), descriptors_of(
            BAND_SETS["rgb+cirrus"] + ["B11"]))
    np.testing.assert_allclose(with_nan[..., :24], plain, atol=1e-5)
    assert (with_zeros[..., :24] - plain).abs().max() > 1e-3  # zeros would shift them
    assert torch.isfinite(with_nan).all()


# -- encoder -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bands", list(BAND_SETS.values()), ids=list(BAND_SETS))
def test_embedding_shape_does_not_depend_on_the_bands(bands):
    encoder = tiny_encoder()
    with torch.no_grad():
        embedding = encoder(image_of(len(bands), size=20), descriptors_of(bands))
    assert embedding.shape == (2, 8, 20, 20)
    assert torch.isfinite(embedding).all() and embedding.std() > 1e-3


@pytest.mark.parametrize("bands", [BAND_SETS["sentinel-2"], BAND_SETS["sentinel-2+sar+dem"],
                                   BAND_SETS["landsat-8"]], ids=["s2", "s2+sar+dem", "l8"])
def test_shuffled_bands_with_their_descriptors_give_the_same_embedding(bands):
    encoder = tiny_encoder(seed=1)
    image, descriptors = image_of(len(bands), seed=2), descriptors_of(bands)
    order = torch.randperm(len(bands), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        reference = encoder(image, descriptors)
        shuffled = encoder(image[:, order], descriptors[:, order])
        mismatched = encoder(image[:, order], descriptors)  # values without their descriptors
    np.testing.assert_allclose(shuffled, reference, atol=1e-5)
    assert (mismatched - reference).abs().max() > 1e-3


def test_a_masked_or_empty_band_is_the_same_as_no_band():
    encoder = tiny_encoder()
    bands = BAND_SETS["rgb+cirrus"]
    image, descriptors = image_of(4), descriptors_of(bands)
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])
    empty = image.clone()
    empty[0, 2] = torch.nan
    with torch.inference_mode():
        masked = encoder(image, descriptors, band_mask=mask)
        emptied = encoder(empty, descriptors)
        dropped = encoder(image[:1, [0, 1, 3]], descriptors[:, [0, 1, 3]])
        full = encoder(image, descriptors)
    for result in (masked, emptied):
        np.testing.assert_allclose(result[:1], dropped, atol=1e-5)
        np.testing.assert_allclose(result[1:], full[1:], atol=1e-5)
    assert (full[:1] - dropped).abs().max() > 1e-3


def test_descriptors_per_image_and_shape_errors():
    encoder = tiny_encoder()
    image = image_of(3)
    shared = descriptors_of(BAND_SETS["rgb"])
    with torch.no_grad():
        np.testing.assert_allclose(encoder(image, shared[0]),
                                   encoder(image, shared.repeat(2, 1, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="descriptors must be"):
        encoder(image, descriptors_of(BAND_SETS["rgb+cirrus"]))
    with pytest.raises(ValueError, match="band_mask must be"):
        encoder(image, shared, band_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, bands, H, W\)"):
        encoder(image[0], shared)
    with pytest.raises(ValueError, match="unknown SEnSeI-v2 head"):
        sensei_v2("unet", **TINY)


def test_reconstruction_and_its_loss():
    encoder = tiny_encoder()
    encoder.train()
    bands = BAND_SETS["sentinel-2+sar+dem"]
    image, descriptors = image_of(len(bands), size=16), descriptors_of(bands)
    image[1, 3, :5] = torch.nan
    embedding = encoder(image, descriptors)
    reconstructed = encoder.reconstruct(embedding, descriptors)
    assert reconstructed.shape == image.shape
    loss = encoder.reconstruction_loss(embedding, image, descriptors)
    valid = torch.isfinite(image)
    expected = ((reconstructed - image)[valid] ** 2).mean()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    for module in (encoder.decoder, encoder.band_embedding, encoder.descriptor_layers):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    strided = encoder.reconstruction_loss(embedding.detach(), image, descriptors, stride=4)
    sub = encoder.reconstruct(embedding.detach()[..., ::4, ::4], descriptors)
    target = image[..., ::4, ::4]
    keep = torch.isfinite(target)
    assert strided.item() == pytest.approx(((sub - target)[keep] ** 2).mean().item(), rel=1e-5)


# -- full model --------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["segformer-b0", "deeplab"])
def test_full_model_is_permutation_invariant_at_input_size(head):
    model = tiny_model(head)
    bands = BAND_SETS["sentinel-2+sar+dem"]
    image, descriptors = image_of(len(bands), size=32, seed=4), descriptors_of(bands)
    order = torch.randperm(len(bands), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        logits = model(image, descriptors)
        shuffled = model(image[:, order], descriptors[:, order])
        rgb = model(image[:, :3], descriptors[:, :3])
    assert logits.shape == rgb.shape == (2, 7, 32, 32)
    np.testing.assert_allclose(shuffled, logits, atol=1e-5)
    assert (shuffled - logits).abs().max() < 1e-5 * logits.abs().max()
    assert logits.std(dim=(2, 3)).mean() > 1e-3


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_of_the_default_configurations():
    with torch.device("meta"):
        models = {head: sensei_v2(head) for head in ("segformer-b0", "segformer-b2", "deeplab")}
    encoder = models["deeplab"].encoder
    assert encoder.embedding_channels == 32
    counts = {"encoder": count(encoder) - count(encoder.decoder),
              "decoder": count(encoder.decoder),
              **{head: count(model) for head, model in models.items()}}
    print("SEnSeI-v2 parameters:", counts)
    assert counts == {"encoder": 341_118, "decoder": 11_137, "segformer-b0": 4_113_670,
                      "segformer-b2": 27_795_206, "deeplab": 22_882_198}


# -- checkpoints and registered models ---------------------------------------------------------

@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_checkpoint_round_trip(tmp_path, name):
    model = tiny_model()
    path = save_checkpoint(tmp_path / name, model, bands=["red", "green", "blue"],
                           extra={"epoch": 3})
    if name.endswith(".pt"):
        assert set(torch.load(path, weights_only=True)) == {"state_dict", "xcloud_sensei_v2"}
    loaded, meta = load_checkpoint(path)
    assert not loaded.training and meta.head == "segformer-b0"
    assert meta.bands == ("B04", "B03", "B02") and meta.extra == {"epoch": 3}
    assert meta.encoder == model.encoder.config
    bands = BAND_SETS["landsat-8"]
    image, descriptors = image_of(len(bands)), descriptors_of(bands)
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded(image, descriptors), model(image, descriptors))


def test_checkpoints_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"state_dict": {}, "xcloud_sensei_v2": "{}"}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="no readable xcloud SEnSeI-v2 metadata"):
        load_checkpoint(tmp_path / "other.pt")
    path = save_checkpoint(tmp_path / "b0.pt", tiny_model())
    with pytest.raises(WeightsError, match="a segformer-b0 head"):
        xcloud.models.load("sensei-v2-deeplab", weights=path)
    with pytest.raises(WeightsError, match="not Sentinel-2 spectral bands"):
        save_checkpoint(tmp_path / "vv.pt", tiny_model(), bands=["VV"])
    state = torch.load(path, weights_only=True)
    state["state_dict"].pop("head.decode_head.classifier.bias")
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match=r"missing head\.decode_head\.classifier\.bias"):
        load_checkpoint(tmp_path / "broken.pt")


@pytest.mark.parametrize("name", ["sensei-v2-segformer-b0", "sensei-v2-segformer-b2",
                                  "sensei-v2-deeplab"])
def test_registered_models_need_weights(name):
    entry = xcloud.models.get(name)
    info = entry.info
    assert info.bands == SENTINEL2_L1C_BANDS and info.needs_weights_file
    assert (info.tile_size, info.tile_overlap, info.resolution) == (256, 32, 10.0)
    assert info.normalization.kind == "none" and info.level == "L1C"
    assert info.scheme.names == ("land", "water", "snow", "thin_cloud", "thick_cloud",
                                 "cloud_shadow")
    assert info.scheme.values == (0, 1, 2, 3, 4, 5) and info.scheme.nodata.value == 6
    label_scheme = scheme_of_model(info)
    assert [(c.value, c.name) for c in label_scheme.classes] == [
        (c.value, c.name) for c in info.scheme.all_classes()]
    with pytest.raises(MissingWeightsError, match="weights=PATH"):
        entry.load()
    with pytest.raises(MissingWeightsError, match="save_checkpoint"):
        xcloud.predict(synthetic_scene(16), model=name)
    with pytest.raises(ValueError, match="runtime must be 'auto' or 'torch'"):
        entry.load(weights="any.pt", runtime="onnxruntime")


# -- through the engine ------------------------------------------------------------------------

SIZE, TILE, OVERLAP = 48, 64, 8


@pytest.fixture(scope="module")
def scene():
    scene = synthetic_scene(SIZE, seed=3)
    for name in scene.data_vars:
        scene[name][:10, :14] = np.nan
    return scene


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, scene):
    folder = tmp_path_factory.mktemp("sensei")
    model = tiny_model(seed=7)
    cube = torch.from_numpy(np.stack([scene[b].values for b in SENTINEL2_L1C_BANDS]))[None]
    classifier = model.head.decode_head.classifier
    with torch.no_grad():  # transformers' init gives flat logits: sharpen, centre on the scene
        classifier.weight.mul_(10.0)
        classifier.bias.sub_(model(cube, descriptors_of(SENTINEL2_L1C_BANDS)).mean((0, 2, 3)))
    return (save_checkpoint(folder / "all.safetensors", model),
            save_checkpoint(folder / "rgb.pt", model, bands=("B04", "B03", "B02")))


def direct_proba(model, scene):
    """The scene as one tile, mirrored at the edges, zero where there is no data."""
    cube = np.stack([scene[b].values for b in model.info.bands])
    empty = np.isnan(cube).all(0)
    image = np.where(empty, 0.0, cube).astype(np.float32)
    after = TILE - OVERLAP - SIZE
    padded = np.pad(image, [(0, 0), (OVERLAP, after), (OVERLAP, after)], mode="symmetric")
    proba = model.predict_proba(padded[None])[0][:, OVERLAP:-after, OVERLAP:-after]
    proba[:, empty] = np.nan
    return proba


def test_predict_through_the_engine(scene, checkpoints):
    options = {"model": "sensei-v2-segformer-b0", "weights": checkpoints[0],
               "tile_size": TILE, "tile_overlap": OVERLAP}
    proba = xcloud.predict(scene, **options, output="proba").values
    model = xcloud.models.load("sensei-v2-segformer-b0", weights=checkpoints[0])
    reference = direct_proba(model, scene)
    assert proba.shape == (6, SIZE, SIZE) and np.nanstd(reference, axis=(1, 2)).min() > 1e-3
    np.testing.assert_allclose(proba, reference, atol=1e-5)
    np.testing.assert_allclose(np.nansum(proba, axis=0)[10:], 1.0, atol=1e-5)
    mask = xcloud.predict(scene, **options).values
    assert (mask[:10, :14] == 6).all() and mask[10:].max() <= 5
    assert len(np.unique(mask[10:])) >= 3
    top = np.sort(reference[:, 10:], axis=0)
    clear = top[-1] - top[-2] > 1e-4
    np.testing.assert_array_equal(mask[10:][clear],
                                  np.nanargmax(reference[:, 10:], axis=0)[clear])


def test_any_band_subset_through_the_engine(scene, checkpoints):
    """Checkpoint bands pick RGB from the 13 bands; a registered RGB model needs only RGB."""
    options = {"weights": checkpoints[1], "tile_size": TILE, "tile_overlap": OVERLAP,
               "output": "proba"}
    from_13 = xcloud.predict(scene, model="sensei-v2-segformer-b0", **options).values
    entry = registry.register(sensei_v2_entry("test-sensei-rgb", head="segformer-b0",
                                              bands=("blue", "green", "red")))
    try:
        rgb_only = scene[["B02", "B03", "B04"]]
        from_3 = xcloud.predict(rgb_only, model=entry.name, **options).values
        all_bands = xcloud.predict(rgb_only, model=entry.name, **{
            **options, "weights": checkpoints[0]}).values
    finally:
        registry._REGISTRY.pop(entry.name)
    np.testing.assert_allclose(from_3, from_13, atol=1e-5)
    assert np.nanmax(np.abs(from_13 - xcloud.predict(
        scene, model="sensei-v2-segformer-b0", **{**options, "weights": checkpoints[0]}
    ).values)) > 1e-3  # RGB alone is not all 13 bands
    np.testing.assert_allclose(all_bands, from_3, atol=1e-5)  # same bands, another order
