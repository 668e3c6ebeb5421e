"""Partial labels: Table I mappings, generated data sets, SEnSeI-v2 training through them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xcloud.errors import DatasetError, UnknownModelError
from xcloud.models.segformer import segformer_b0
from xcloud.models.sensei import band_descriptors, sensei_v2
from xcloud.models.sensei_encoder import HeadSpec
from xcloud.models.sensei_published import load_checkpoint
from xcloud.training.kappaset import synthetic_kappaset
from xcloud.training.partial import (
    FMSC,
    PARTIAL_SCHEMES,
    SYNTHETIC_A,
    SYNTHETIC_B,
    TARGET_CLASSES,
    PartialLabelDataset,
    evaluate_partial,
    get_partial_scheme,
    simulate_labels,
    synthetic_partial_datasets,
    synthetic_partial_scene,
    to_multi_hot,
    train_partial,
)
from xcloud.training.train import TrainResult, train

SURFACE = {"land", "water", "snow"}
CLOUD = {"thin_cloud", "thick_cloud"}
VALID = set(TARGET_CLASSES) - {"no_data"}
LAND, WATER, SNOW = {"land"}, {"water"}, {"snow"}
THIN, THICK, SHADOW, NO_DATA = {"thin_cloud"}, {"thick_cloud"}, {"cloud_shadow"}, {"no_data"}

TABLE_I = {
    "cloudsen12": {0: SURFACE, 1: THICK, 2: THIN, 3: SHADOW, 255: NO_DATA},
    "fmsc": {0: SURFACE, 1: CLOUD, 2: SHADOW},
    "kappaset": {0: NO_DATA, 1: SURFACE, 2: SHADOW, 3: THIN, 4: THICK, 5: VALID},
    "cesbio": {0: NO_DATA, 1: set(), 2: CLOUD, 3: CLOUD, 4: SHADOW, 5: LAND, 6: WATER,
               7: SNOW},
    "sparcs": {0: SHADOW, 1: SHADOW, 2: WATER, 3: SNOW, 4: LAND, 5: CLOUD, 6: LAND | WATER},
    "l8-biome": {0: NO_DATA, 64: SHADOW, 128: SURFACE, 192: THIN, 255: THICK},
    "l8-biome-noshadow": {0: NO_DATA, 128: SURFACE | SHADOW, 192: THIN, 255: THICK},
    "cloudperu2": {0: SURFACE | SHADOW, 1: CLOUD},
}
ROWS = [(name, value, targets) for name, rows in TABLE_I.items()
        for value, targets in rows.items()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tests run beside others on few cores: one torch thread here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Table I ----------------------------------------------------------------------------------


def test_target_classes_are_the_sensei_v2_channels():
    assert TARGET_CLASSES == ("land", "water", "snow", "thin_cloud", "thick_cloud",
                              "cloud_shadow", "no_data")


@pytest.mark.parametrize(("name", "value", "targets"), ROWS,
                         ids=[f"{n}-{v}" for n, v, _ in ROWS])
def test_table_i_row(name, value, targets):
    scheme = get_partial_scheme(name)
    assert scheme.candidates(value) == targets
    hot = to_multi_hot(np.full((2, 3), value, np.uint8), name)
    expected = np.array([c in targets for c in TARGET_CLASSES])
    assert hot.shape == (7, 2, 3) and hot.dtype == bool
    assert (hot == expected[:, None, None]).all()


@pytest.mark.parametrize("name", list(TABLE_I))
def test_table_i_schemes_have_exactly_these_values(name):
    assert set(PARTIAL_SCHEMES[name].values) == set(TABLE_I[name])


def test_to_multi_hot_maps_every_pixel_and_rejects_unknown_values():
    labels = np.array([[0, 1, 2], [6, 5, 4]])
    hot = to_multi_hot(labels, "sparcs")
    for (row, col), value in np.ndenumerate(labels):
        got = {c for c, on in zip(TARGET_CLASSES, hot[:, row, col], strict=True) if on}
        assert got == TABLE_I["sparcs"][value]
    with pytest.raises(DatasetError, match=r"\[7\]"):
        to_multi_hot(np.array([[7]]), "sparcs")
    with pytest.raises(DatasetError, match="integers"):
        to_multi_hot(np.array([[0.5]]), "sparcs")
    with pytest.raises(DatasetError, match="no partial scheme"):
        get_partial_scheme("nope")


def test_catalogue_scene_tags_narrow_clear_and_cloud():
    assert FMSC.candidates(0, tags=[]) == LAND
    assert FMSC.candidates(0, tags=["Snow/Ice", "forest/jungle"]) == LAND | SNOW
    assert FMSC.candidates(0, tags=["open water"]) == LAND | WATER
    assert FMSC.candidates(1, tags=["thick"]) == THICK
    assert FMSC.candidates(1, tags=["cumulus"]) == CLOUD  # no thickness tag: both kept
    assert FMSC.candidates(2, tags=[]) == SHADOW
    hot = FMSC.to_multi_hot(np.zeros((1, 1), np.uint8), tags=["coastal"])
    assert hot[:, 0, 0].tolist() == [True, True, False, False, False, False, False]


def test_simulated_labels_always_contain_the_truth():
    _, truth = synthetic_partial_scene(32, seed=3)
    for scheme in (SYNTHETIC_A, SYNTHETIC_B, get_partial_scheme("sensei-v2")):
        hot = scheme.to_multi_hot(simulate_labels(truth, scheme))
        assert np.take_along_axis(hot, truth[None].astype(np.intp), axis=0).all()
    assert SYNTHETIC_A.to_multi_hot(simulate_labels(truth, SYNTHETIC_A)).sum(0).max() == 2
    with pytest.raises(DatasetError, match="no_data with 0 values"):
        simulate_labels(truth, FMSC)


# --- generated data ---------------------------------------------------------------------------


def test_synthetic_scene_has_every_class_with_plausible_spectra():
    scenes = [synthetic_partial_scene(32, seed=s) for s in range(4)]
    image = np.concatenate([i for i, _ in scenes], axis=1)
    truth = np.concatenate([t for _, t in scenes], axis=0)
    assert image.shape == (13, 128, 32) and image.dtype == np.float32
    assert set(np.unique(truth)) == set(range(7))
    mean = {c: image[:, truth == k].mean(1) for k, c in enumerate(TARGET_CLASSES)}
    b02, b8a, b11 = 1, 8, 11
    assert (image[:, truth == 6] == 0).all()
    assert mean["thick_cloud"][b02] > mean["thin_cloud"][b02] > mean["land"][b02]
    assert mean["water"][b8a] < 0.5 * mean["land"][b8a]
    assert mean["snow"][b02] > mean["thick_cloud"][b02]
    assert mean["snow"][b11] < 0.5 * mean["thick_cloud"][b11]


def test_partial_dataset_samples_split_and_descriptors():
    a, b = synthetic_partial_datasets(n_scenes=10, size=16, seed=2)
    image, hot = a[0]
    assert image.shape == (6, 16, 16) and hot.shape == (7, 16, 16) and hot.dtype == bool
    assert len(b.bands) == 13 and b.scheme is SYNTHETIC_B
    np.testing.assert_array_equal(a.descriptors, band_descriptors(a.bands))
    train_part, val_part = a.split(0.2, seed=0)
    assert (len(train_part), len(val_part)) == (8, 2)
    assert train_part.truth.shape == (8, 16, 16)
    with pytest.raises(DatasetError, match="bands"):
        PartialLabelDataset(a.images, a.labels, SYNTHETIC_A, bands=a.bands[:5])
    with pytest.raises(DatasetError, match=r"\[9\]"):
        PartialLabelDataset(a.images, np.full_like(a.labels, 9), SYNTHETIC_A, bands=a.bands)
    tagged = PartialLabelDataset(a.images[:1], np.zeros((1, 16, 16), np.uint8), FMSC,
                                 bands=a.bands, tags=[["snow/ice"]])
    assert tagged.multi_hot(0)[:, 0, 0].tolist() == [True, False, True, False, False, False,
                                                     False]


# --- the training loop ------------------------------------------------------------------------


class _Recorder(torch.nn.Module):
    """Constant logits scaled by a batch-normed band mean; records what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(1, 7, 1, 1))
        self.norm = torch.nn.BatchNorm2d(1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, image, descriptors, band_mask=None):
        self.calls.append((image.clone(), descriptors.clone(), band_mask))
        return self.scale * self.norm(image.mean(1, keepdim=True))


def test_mixed_batches_pad_fewer_bands_and_mask_them():
    a, b = synthetic_partial_datasets(n_scenes=6, size=16, seed=4)
    recorder = _Recorder()
    train_partial(recorder, [a, b], epochs=1, batch_size=4, recalibrate_bn=False, device="cpu")
    padded = [call for call in recorder.calls if call[2] is not None]
    assert len(recorder.calls) == 3 and padded
    for image, descriptors, mask in padded:
        assert image.shape[1] == descriptors.shape[1] == 13 and mask.shape == (len(image), 13)
        for row in np.flatnonzero(mask.sum(1).numpy() == 6):
            assert mask[row].tolist() == [True] * 6 + [False] * 7
            np.testing.assert_array_equal(descriptors[row, :6].numpy(), a.descriptors)
            assert not descriptors[row, 6:].any() and not image[row, 6:].any()
    recorder.calls.clear()
    train_partial(recorder, [a, b], epochs=1, batch_size=4, mix=False, recalibrate_bn=False,
                  device="cpu")
    assert sorted(call[0].shape[1] for call in recorder.calls) == [6, 6, 13, 13]
    assert all(call[2] is None for call in recorder.calls)


def test_random_band_subsets_per_image():
    _, b = synthetic_partial_datasets(n_scenes=8, size=16, seed=7, random_bands_b=(2, 3))
    recorder = _Recorder()
    train_partial(recorder, b, epochs=2, batch_size=4, recalibrate_bn=False, device="cpu")
    counts = set()
    for image, descriptors, mask in recorder.calls:
        mask = torch.ones(image.shape[:2], dtype=torch.bool) if mask is None else mask
        counts |= set(mask.sum(1).tolist())
        for row, keep in zip(descriptors, mask, strict=True):
            assert all((b.descriptors == d.numpy()).all(1).any() for d in row[keep])
    assert counts == {2, 3} and all(c[0].shape[1] <= 3 for c in recorder.calls)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_batch_norm_statistics_are_recalibrated_after_each_epoch(recalibrate):
    a, _ = synthetic_partial_datasets(n_scenes=5, size=16, seed=6)
    recorder = _Recorder()
    train_partial(recorder, a, epochs=1, batch_size=8, recalibrate_bn=recalibrate,
                  device="cpu")
    band_mean = torch.from_numpy(a.images).mean(1)
    expected = float(band_mean.mean()) * (1 if recalibrate else 0.1)  # else 1 momentum step
    assert float(recorder.norm.running_mean) == pytest.approx(expected, rel=1e-5)
    assert recorder.norm.momentum == 0.1


def test_train_dispatches_partial_labels_and_kappaset_to_sensei(tmp_path):
    root = tmp_path / "kappaset"
    synthetic_kappaset(root, n_products=1, tiles_per_product=4, size=32, seed=1)
    a, _ = synthetic_partial_datasets(n_scenes=4, size=32, seed=5)
    checkpoint = tmp_path / "sensei.safetensors"
    result = train([root, a], model="sensei-v2-segformer-b0", checkpoint=checkpoint, epochs=2,
                   batch_size=4, learning_rate=1e-3, val_fraction=0.25, device="cpu")
    assert isinstance(result, TrainResult) and len(result.history) == 2
    assert {"val_loss_kappaset", "val_loss_synthetic-a", "train_aux"} <= set(result.best)
    assert result.history[0]["train_aux"] > 0
    network, meta = load_checkpoint(checkpoint)
    assert network.head_spec.kind == "segformer" and network.recovery_module is not None
    assert network.segmenter.config.hidden_sizes == (32, 64, 160, 256)  # B0
    assert meta.extra["epoch"] == result.best["epoch"]
    assert meta.extra["datasets"]["kappaset"]["scheme"] == "kappaset"
    assert evaluate_partial(network, a, device="cpu").total == 4 * 32 * 32
    with pytest.raises(UnknownModelError, match="sensei-v2-<head>"):
        train([a], model="sensei-v3")
    with pytest.raises(ValueError, match="resume"):
        train([a], model="sensei-v2", resume=True)


# --- must-show 3: two schemes teach a class only one of them labels ---------------------------

TRAINING = {"epochs": 24, "batch_size": 4, "learning_rate": 5e-3, "device": "cpu", "seed": 0}


def _tiny_sensei() -> torch.nn.Module:
    """SEnSeI-v2 as released with a small encoder, a recovery module and a shrunk SegFormer-B0
    head."""
    torch.manual_seed(0)
    sensei = {"descriptors": {"style": "SEnSeIv2", "N_embeddings": 32, "final_size": 74},
              "blocks": [
                  {"type": "GLOBAL_STATS", "percentiles": [0.01, 0.1, 0.5, 0.9, 0.99]},
                  {"type": "FCL", "layer_sizes": [32, 32], "skips": True},
                  {"type": "ATTENTION", "num_transformerencoders": 1, "num_heads": 2,
                   "dims_per_head": 16, "intermediate_size": 64, "dropout": 0.0,
                   "skips": True},
                  {"type": "BAND_EMBEDDING", "embedding_dims": 8, "head_layer_sizes": [16],
                   "skips_heads": True, "normalize": True}]}
    head = segformer_b0(8, 7, depths=(1, 1, 1, 1), hidden_sizes=(16, 32, 32, 64),
                        decoder_hidden_size=32, num_attention_heads=(1, 1, 1, 1)).to_dict()
    return sensei_v2(HeadSpec("segformer", head), sensei_config=sensei,
                     recovery={"preconcatenation_layer_sizes": [16], "sampling_rate": 4})


@pytest.fixture(scope="module")
def data():
    """Training sets A (6 bands, clouds lumped) and B (13 bands, surfaces lumped); held out."""
    return (synthetic_partial_datasets(n_scenes=24, size=32, seed=0),
            synthetic_partial_datasets(n_scenes=8, size=32, seed=1000))


def _trained(datasets, data):
    model = _tiny_sensei()
    before = [evaluate_partial(model, d, device="cpu") for d in data[1]]
    history = train_partial(model, datasets, **TRAINING)
    return model, history, before


@pytest.fixture(scope="module")
def mixed(data):
    return _trained(list(data[0]), data)


@pytest.fixture(scope="module")
def a_only(data):
    return _trained([data[0][0]], data)


def _thin_vs_thick(matrix) -> float:
    """Balanced accuracy of thin vs thick among the cloud pixels (chance: 0.5)."""
    sub = matrix.matrix[np.ix_([3, 4], [3, 4])].astype(float)
    return float(np.mean(np.diag(sub) / sub.sum(1)))


def test_mixed_training_lowers_the_loss(mixed):
    history = mixed[1]
    assert history[-1]["train_ce"] < 0.6 * history[0]["train_ce"]


def test_thin_and_thick_learnt_from_b_are_told_apart_on_a_style_images(mixed, a_only, data):
    test_a = data[1][0]
    matrix = evaluate_partial(mixed[0], test_a, device="cpu")
    control = evaluate_partial(a_only[0], test_a, device="cpu")
    thin_share = float((test_a.truth == 3).sum() / np.isin(test_a.truth, [3, 4]).sum())
    figures = {"after": _thin_vs_thick(matrix), "before": _thin_vs_thick(mixed[2][0]),
               "A only": _thin_vs_thick(control), "recall": matrix.recall()[3:5],
               "precision": matrix.precision()[3:5], "thin share": thin_share}
    assert figures["after"] >= 0.8, figures
    assert matrix.recall()[3] >= 0.5 and matrix.precision()[3] >= thin_share + 0.2, figures
    assert matrix.recall()[4] >= 0.7 and matrix.precision()[4] >= 0.6, figures
    assert figures["A only"] <= 0.65 and figures["after"] >= figures["A only"] + 0.2, figures


def test_water_learnt_from_a_is_found_on_b_style_images(mixed, data):
    test_b = data[1][1]
    matrix = evaluate_partial(mixed[0], test_b, device="cpu")
    share = float((test_b.truth == 1).mean())
    figures = {"recall": matrix.recall()[1], "precision": matrix.precision()[1],
               "share": share, "before recall": mixed[2][1].recall()[1]}
    assert matrix.recall()[1] >= 0.45 and matrix.precision()[1] >= share + 0.35, figures
