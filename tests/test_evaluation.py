"""Evaluation: metrics against hand counts and scikit-learn, scheme mappings, model scoring."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    jaccard_score,
    precision_recall_fscore_support,
)

from xcloud.errors import BandError, DatasetError
from xcloud.evaluation import (
    ConfusionMatrix,
    SchemeError,
    binary_metrics,
    evaluate_model,
    evaluate_models,
    feature_importance,
    finest_shared_level,
    get_scheme,
    scheme_names,
    scheme_of_model,
    superclass_metrics,
)
from xcloud.evaluation.command import add_evaluate_command
from xcloud.models import BaseCloudModel, ModelEntry, ModelInfo, registry
from xcloud.models.classes import UKIS_SCHEME

nan = np.nan


def _from_counts(counts: list[list[int]], **kwargs) -> ConfusionMatrix:
    """A matrix filled through update() with pixels that give ``counts``."""
    counts = np.asarray(counts)
    truth, pred = np.indices(counts.shape).reshape(2, -1)
    cm = ConfusionMatrix(len(counts), **kwargs)
    return cm.update(np.repeat(pred, counts.ravel()), np.repeat(truth, counts.ravel()))


# ---------------------------------------------------------------- metrics, by hand


def test_hand_counted_scores_with_nan_rules():
    # 5 classes; 2 is never predicted, 3 is predicted but never present, 4 is neither.
    target = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 3, 1, 1, 0, 0, 0, 0])
    cm = ConfusionMatrix(5).update(pred, target)
    # rows = truth: 0 -> [3 1 0 1 0], 1 -> [1 2 0 0 0], 2 -> [3 0 0 0 0], 3, 4 -> 0
    np.testing.assert_array_equal(cm.matrix, [[3, 1, 0, 1, 0], [1, 2, 0, 0, 0],
                                              [3, 0, 0, 0, 0], [0] * 5, [0] * 5])
    # class 0: TP 3, FP 4, FN 2 -> P 3/7, R 3/5, dice 6/12, IoU 3/9
    # class 1: TP 2, FP 1, FN 1 -> P 2/3, R 2/3, dice 4/6, IoU 2/4
    # class 2: TP 0, FP 0, FN 3 -> P 0/0, R 0, dice 0, IoU 0
    # class 3: TP 0, FP 1, FN 0 -> P 0, R 0/0, dice 0, IoU 0
    # class 4: nothing -> all 0/0
    np.testing.assert_allclose(cm.precision(), [3 / 7, 2 / 3, nan, 0.0, nan])
    np.testing.assert_allclose(cm.recall(), [0.6, 2 / 3, 0.0, nan, nan])
    np.testing.assert_allclose(cm.dice(), [0.5, 2 / 3, 0.0, 0.0, nan])
    np.testing.assert_allclose(cm.f1(), cm.dice())
    np.testing.assert_allclose(cm.iou(), [1 / 3, 0.5, 0.0, 0.0, nan])
    assert cm.accuracy() == pytest.approx(5 / 11)  # trace 3 + 2 over 11 pixels
    assert cm.balanced_accuracy() == pytest.approx((0.6 + 2 / 3 + 0.0) / 3)  # 0.42222
    assert cm.total == 11 and cm.n_ignored == 0


def test_ignored_and_out_of_range_pixels_are_skipped():
    cm = ConfusionMatrix(3, ignore_index=255, class_names=("a", "b", "c"))
    target = np.array([0, 1, 2, 255, 7, -1, 1])
    pred = np.array([0, 2, 2, 1, 0, 0, 255])
    cm.update(pred, target)
    # scored: (0,0), (1,2), (2,2); skipped: truth 255, truth 7, truth -1, prediction 255
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 0, 1], [0, 0, 1]])
    assert cm.n_ignored == 4
    with pytest.raises(ValueError, match=r"predictions \[9\]"):
        cm.update(np.array([9]), np.array([0]))


def test_ignore_index_inside_the_classes_is_counted_when_predicted():
    # 3 classes, 2 = UNDEFINED: truth 2 is skipped, a prediction of 2 on truth 0 is an error
    cm = ConfusionMatrix(3, ignore_index=2)
    cm.update(np.array([0, 2, 1, 0]), np.array([0, 0, 2, 2]))
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 1], [0, 0, 0], [0, 0, 0]])
    assert cm.n_ignored == 2
    assert cm.recall()[0] == 0.5  # 1 of the 2 clear pixels


def test_torch_input_and_any_shape():
    torch = pytest.importorskip("torch")
    target = torch.tensor([[[0, 1], [1, 1]]])
    pred = torch.tensor([[[0, 1], [0, 1]]])
    cm = ConfusionMatrix(2).update(pred, target)
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [1, 2]])
    with pytest.raises(ValueError, match="integers"):
        cm.update(np.array([0.5]), np.array([0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = 5
    target = rng.integers(0, n - 1, 5000)  # class 4 never present
    pred = rng.choice([0, 1, 3, 4], 5000)  # class 2 never predicted
    cm = ConfusionMatrix(n).update(pred, target)
    labels = list(range(n))
    np.testing.assert_array_equal(cm.matrix, confusion_matrix(target, pred, labels=labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        target, pred, labels=labels, zero_division=np.nan)
    np.testing.assert_allclose(cm.precision(), precision)
    np.testing.assert_allclose(cm.recall(), recall)
    np.testing.assert_allclose(cm.dice(), f1)
    np.testing.assert_array_equal(cm.support(), support)
    # every class is present or predicted here, so IoU is never 0/0
    np.testing.assert_allclose(cm.iou(), jaccard_score(target, pred, labels=labels,
                                                       average=None, zero_division=0))
    assert cm.accuracy() == pytest.approx(accuracy_score(target, pred))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = balanced_accuracy_score(target, pred)
    assert cm.balanced_accuracy() == pytest.approx(expected)


def test_accumulating_batches_equals_one_update_and_merge():
    rng = np.random.default_rng(7)
    target = rng.integers(0, 4, (20, 32, 32))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 4, (20, 32, 32))
    whole = ConfusionMatrix(4, ignore_index=255).update(pred, target)
    batches = ConfusionMatrix(4, ignore_index=255)
    for p, t in zip(pred, target, strict=True):
        batches.update(p, t)
    np.testing.assert_array_equal(batches.matrix, whole.matrix)
    assert batches.n_ignored == whole.n_ignored == int((target == 255).sum())
    first = ConfusionMatrix(4, ignore_index=255).update(pred[:7], target[:7])
    first.merge(ConfusionMatrix(4, ignore_index=255).update(pred[7:], target[7:]))
    np.testing.assert_array_equal(first.matrix, whole.matrix)
    with pytest.raises(ValueError, match="cannot merge"):
        first.merge(ConfusionMatrix(3))


def test_table_and_dict():
    cm = _from_counts([[5, 1], [0, 0]], class_names=("clear", "cloud"))
    text = cm.table()
    assert "clear" in text and "83.3" in text  # recall of clear 5/6
    assert "rows: truth" in text
    data = cm.to_dict()
    assert data["matrix"] == [[5, 1], [0, 0]]
    assert data["precision"] == {"clear": 1.0, "cloud": 0.0}
    assert data["recall"]["cloud"] is None  # 0/0
    json.dumps(data)


def test_superclass_scores_by_hand():
    # level cloud_shadow: 0 clear, 1 cloud_shadow, 2 cloud; rows = truth
    cm = _from_counts([[50, 5, 5], [4, 10, 6], [2, 3, 15]])
    cloud = binary_metrics(cm, [2])
    # cloud vs rest: TP 15, FN 2+3 = 5, FP 5+6 = 11, TN 50+5+4+10 = 69
    assert cloud["precision"] == pytest.approx(15 / 26)  # 0.5769
    assert cloud["recall"] == pytest.approx(15 / 20)  # 0.75
    assert cloud["f1"] == pytest.approx(30 / 46)  # 0.6522
    assert cloud["iou"] == pytest.approx(15 / 31)  # 0.4839
    assert cloud["balanced_accuracy"] == pytest.approx((15 / 20 + 69 / 80) / 2)  # 0.80625
    assert cloud["accuracy"] == pytest.approx(84 / 100)
    invalid = binary_metrics(cm, [1, 2])
    # shadow + cloud vs clear: TP 10+6+3+15 = 34, FN 4+2 = 6, FP 5+5 = 10, TN 50
    assert invalid["precision"] == pytest.approx(34 / 44)  # 0.7727
    assert invalid["recall"] == pytest.approx(34 / 40)  # 0.85
    assert invalid["f1"] == pytest.approx(68 / 84)  # 0.8095
    assert invalid["iou"] == pytest.approx(34 / 50)  # 0.68
    assert invalid["balanced_accuracy"] == pytest.approx((34 / 40 + 50 / 60) / 2)  # 0.8417
    assert superclass_metrics(cm, "cloud_shadow") == {"cloud": cloud, "invalid": invalid}
    two = _from_counts([[70, 10], [6, 14]])
    assert set(superclass_metrics(two, "cloud")) == {"cloud"}
    assert set(superclass_metrics(two, "valid")) == {"invalid"}
    with pytest.raises(ValueError, match="proper subset"):
        binary_metrics(cm, [0, 1, 2])


# ---------------------------------------------------------------- schemes and levels

# KappaMask classes: 0 missing, 1 clear, 2 cloud shadow, 3 semi-transparent, 4 cloud, 5 undefined
TABLE_1 = {
    "kappamask": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5},
    # km_predict's products (mask value = the network's channel): 0 undefined .. 5 missing
    "kappamask-km-predict": {0: 5, 1: 1, 2: 2, 3: 3, 4: 4, 5: 0},
    "sen2cor-scl": {0: 0, 1: 0, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1, 7: 1, 8: 4, 9: 4, 10: 3, 11: 1},
    "fmask": {0: 1, 1: 1, 2: 2, 3: 1, 4: 4, 255: 0},
    "s2cloudless": {0: 1, 1: 4, 255: 0},
    "cmix": {0: 1, 1: 4, 2: 3, 3: 2},
    "fmsc": {0: 1, 1: 4, 2: 2},
    "cloudsen12": {0: 1, 1: 4, 2: 3, 3: 2, 255: 0},
    "sensei-v2": {0: 1, 1: 1, 2: 1, 3: 3, 4: 4, 5: 2, 6: 0},
    "sensei-v2-4class": {0: 1, 1: 4, 2: 3, 3: 2, 255: 0},
    "sensei-v2-valid-invalid": {0: 1, 1: 5},
    "ukis-csmask": {0: 1, 1: 4, 2: 2, 255: 0},
    "ukis-csmask-testfile": {0: 2, 1: 1, 2: 1, 3: 1, 4: 4},
}


def test_every_scheme_has_its_table_1_rows():
    assert sorted(TABLE_1) == scheme_names()


@pytest.mark.parametrize(("name", "rows"), TABLE_1.items(), ids=list(TABLE_1))
def test_table_1_mapping_row_by_row(name, rows):
    scheme = get_scheme(name)
    assert sorted(rows) == sorted(scheme.values)
    for value, kappamask in rows.items():
        assert scheme.kappamask_class(value) == kappamask, f"{name} {value}"
    values = np.array(list(rows), np.uint8)
    np.testing.assert_array_equal(scheme.to_kappamask(values), list(rows.values()))


@pytest.mark.parametrize(("name", "levels"), [
    ("kappamask", ("full", "cloud_shadow", "cloud", "valid")),
    ("sen2cor-scl", ("full", "cloud_shadow", "cloud", "valid")),
    ("cloudsen12", ("full", "cloud_shadow", "cloud", "valid")),
    ("ukis-csmask", ("cloud_shadow", "cloud", "valid")),
    ("fmask", ("cloud_shadow", "cloud", "valid")),
    ("fmsc", ("cloud_shadow", "cloud", "valid")),
    ("s2cloudless", ("cloud",)),
    ("sensei-v2-valid-invalid", ("valid",)),
])
def test_levels_each_scheme_supports(name, levels):
    assert get_scheme(name).levels() == levels


def test_testfile_labels_at_each_level():
    scheme = get_scheme("ukis-csmask-testfile")
    values = np.array([0, 1, 2, 3, 4])  # shadow, clear x3, cloud
    np.testing.assert_array_equal(scheme.to_level(values, "cloud_shadow"), [1, 0, 0, 0, 2])
    np.testing.assert_array_equal(scheme.to_level(values, "cloud"), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(scheme.to_level(values, "valid"), [1, 0, 0, 0, 1])
    with pytest.raises(SchemeError, match="cannot be scored at level full"):
        scheme.to_level(values, "full")
    with pytest.raises(DatasetError, match=r"values \[9\]"):
        scheme.to_level(np.array([0, 9]), "cloud")


def test_missing_and_undefined_are_not_scored():
    kappamask = get_scheme("kappamask")
    np.testing.assert_array_equal(kappamask.to_level(np.arange(6), "full"),
                                  [255, 0, 1, 2, 3, 255])
    scl = get_scheme("sen2cor-scl")
    np.testing.assert_array_equal(scl.to_level(np.arange(12), "cloud_shadow"),
                                  [255, 255, 0, 1, 0, 0, 0, 0, 2, 2, 2, 0])


@pytest.mark.parametrize(("a", "b", "level"), [
    ("ukis-csmask", "kappamask", "cloud_shadow"),
    ("ukis-csmask", "ukis-csmask-testfile", "cloud_shadow"),
    ("kappamask", "cloudsen12", "full"),
    ("sen2cor-scl", "sensei-v2", "full"),
    ("fmask", "sen2cor-scl", "cloud_shadow"),
    ("sensei-v2-valid-invalid", "ukis-csmask", "valid"),
    *[("s2cloudless", other, "cloud") for other in TABLE_1 if other != "sensei-v2-valid-invalid"],
])
def test_finest_shared_level(a, b, level):
    assert finest_shared_level(a, b).name == level
    assert finest_shared_level(b, a).name == level


def test_no_shared_level():
    with pytest.raises(SchemeError, match="share no level"):
        finest_shared_level("s2cloudless", "sensei-v2-valid-invalid")


def test_every_registered_model_has_a_matching_label_scheme():
    import xcloud

    for name in xcloud.models.list():
        scheme = xcloud.models.get(name).info.scheme
        labels = {c.value: c.name for c in scheme_of_model(xcloud.models.get(name).info).classes}
        for c in scheme.all_classes():
            assert labels.get(c.value) == c.name, f"{name}: class {c.value} {c.name}"


# ---------------------------------------------------------------- scoring a model

TOY_BANDS = ("B02", "B03")


class _Threshold(BaseCloudModel):
    """Cloud where B02 > 0.5, shadow where B02 < 0.1, clear elsewhere; B03 is ignored."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        first = batch[:, 0]
        cloud, shadow = first > 0.5, first < 0.1
        return np.stack([~cloud & ~shadow, cloud, shadow], axis=1).astype(np.float32)


def _truth(b02: np.ndarray) -> np.ndarray:
    """The toy rule in ukis values: 0 clear, 1 cloud, 2 shadow."""
    return np.where(b02 > 0.5, 1, np.where(b02 < 0.1, 2, 0)).astype(np.uint8)


@pytest.fixture
def toy(monkeypatch) -> str:
    info = ModelInfo("toy-threshold", "1", TOY_BANDS, 10.0, UKIS_SCHEME, tile_size=None,
                     tile_overlap=0, halo=0)
    heavy = dataclasses.replace(info, name="toy-needs-weights", needs_weights_file=True)
    registry.list_models()  # load the built-in models first
    for model_info in (info, heavy):
        entry = ModelEntry(model_info, lambda i=model_info, **kwargs: _Threshold(i))
        monkeypatch.setitem(registry._REGISTRY, model_info.name, entry)
    return info.name


def _toy_tile(seed: int, size: int = 48) -> tuple[xr.DataArray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random((2, size, size)).astype(np.float32)
    coords = {"band": list(TOY_BANDS), "y": -10.0 * np.arange(size), "x": 10.0 * np.arange(size)}
    array = xr.DataArray(image, dims=("band", "y", "x"), coords=coords)  # 10 m pixels
    return array, _truth(image[0])


def test_evaluate_model_maps_both_sides_to_the_shared_level(toy):
    image, truth = _toy_tile(0)
    noisy = truth.copy()
    noisy[:4] = 1  # the labels call the first 4 rows cloud
    testfile = np.array([1, 4, 0], np.uint8)[noisy]  # ukis values -> test-file values
    result = evaluate_model(toy, image, testfile, label_scheme="ukis-csmask-testfile")
    assert result.level == "cloud_shadow"
    assert result.matrix.class_names == ("clear", "cloud_shadow", "cloud")
    expected = confusion_matrix(noisy.ravel(), _truth(image.values[0]).ravel(), labels=[0, 2, 1])
    np.testing.assert_array_equal(result.matrix.matrix, expected)
    coarse = evaluate_model(toy, image, testfile, label_scheme="ukis-csmask-testfile",
                            level="cloud")
    np.testing.assert_array_equal(coarse.matrix.matrix,
                                  result.matrix.collapse([[0, 1], [2]]).matrix)
    with pytest.raises(SchemeError, match="level full"):
        evaluate_model(toy, image, testfile, label_scheme="ukis-csmask-testfile", level="full")


def test_many_tiles_and_lazy_tiles_accumulate_the_same_counts(toy):
    tiles = [_toy_tile(seed) for seed in range(3)]
    images = [image for image, _ in tiles]
    labels = [np.array([0, 2, 1], np.uint8)[truth] for _, truth in tiles]  # cloud <-> shadow
    total = evaluate_model(toy, images, labels, label_scheme="ukis-csmask").matrix
    parts = [evaluate_model(toy, i, t, label_scheme="ukis-csmask").matrix
             for i, t in zip(images, labels, strict=True)]
    np.testing.assert_array_equal(total.matrix, sum(p.matrix for p in parts))
    lazy = evaluate_model(toy, [i.chunk({"y": 16, "x": 24}) for i in images],
                          [xr.DataArray(t).chunk(20) for t in labels], label_scheme="ukis-csmask")
    np.testing.assert_array_equal(lazy.matrix.matrix, total.matrix)
    with pytest.raises(DatasetError, match="do not match"):
        evaluate_model(toy, images[0], labels[0][:10], label_scheme="ukis-csmask")


def test_evaluate_models_skips_with_reasons_and_marks_the_level(toy):
    image, truth = _toy_tile(1)
    comparison = evaluate_models(image, truth, label_scheme="ukis-csmask", data_level="L2A",
                                 models=[toy, "toy-needs-weights", "s2cloudless"])
    assert [e.model for e in comparison.evaluations] == [toy]
    assert comparison.skipped["toy-needs-weights"].startswith("needs a weights file")
    assert "lacks band" in comparison.skipped["s2cloudless"]
    (evaluation,) = comparison.evaluations
    assert evaluation.matrix.accuracy() == 1.0
    assert evaluation.notes and "L1C" in evaluation.notes[0]
    summary = comparison.summary()
    assert "L1C*" in summary and "skipped s2cloudless" in summary
    assert json.loads(json.dumps(comparison.to_dict()))["evaluations"][0]["model"] == toy


def test_feature_importance_finds_the_feature_that_matters(toy):
    image, truth = _toy_tile(2, size=64)
    result = feature_importance(toy, image, truth, label_scheme="ukis-csmask")
    np.testing.assert_array_equal(result.baseline, [1.0, 1.0, 1.0])
    # B02 zeroed: everything is shadow -> clear and cloud dice 0, shadow dice small
    assert (result.importance["B02"] > 0.5).all()
    np.testing.assert_array_equal(result.importance["B03"], [0.0, 0.0, 0.0])
    assert "B02" in result.table()
    assert set(feature_importance(toy, [image], [truth], label_scheme="ukis-csmask",
                                  features=["blue"]).importance) == {"B02"}
    with pytest.raises(BandError, match="does not use band"):
        feature_importance(toy, image, truth, label_scheme="ukis-csmask", features=["B12"])


# ---------------------------------------------------------------- the command


def _run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="xcloud")
    add_evaluate_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return args.run(args)


def test_command_prints_importance_for_a_toy_patch(toy, tmp_path, capsys):
    image, truth = _toy_tile(3)
    path = tmp_path / "toy.npz"
    np.savez(path, img=image.values.transpose(1, 2, 0), msk=truth[..., None])
    assert _run_command(["--npz", str(path), "--bands", *TOY_BANDS, "--label-scheme",
                         "ukis-csmask", "--resolution", "10", "--models", toy,
                         "--importance"]) == 0
    out = capsys.readouterr().out
    assert "toy-threshold" in out and "feature importance" in out
    with pytest.raises(DatasetError, match="no array"):
        _run_command(["--npz", str(path), "--label-key", "labels", "--bands", *TOY_BANDS])


def test_command_scores_every_runnable_model_on_the_real_patch(
        labelled_patch, patch_array, reference_labels, tmp_path, capsys):
    from .conftest import need_data

    pytest.importorskip("ukis_csmask", reason="ukis models need: pip install 'xcloud[ukis]'")
    path = need_data("labeled/ukis_csmask/sentinel2.npz")
    out_json = tmp_path / "scores.json"
    assert _run_command(["--npz", str(path), "--data-level", "L1C",
                         "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    results = {e["model"]: e for e in json.loads(out_json.read_text())["evaluations"]}
    skipped = json.loads(out_json.read_text())["skipped"]
    assert {"ukis-4b-l1c", "ukis-4b-l2a", "ukis-6b-l1c", "ukis-6b-l2a"} <= set(results)
    assert "lacks band" in skipped["s2cloudless"] and "skipped s2cloudless" in out
    for name, result in results.items():
        assert result["level"] == "cloud_shadow" and f"== {name}" in out
        assert result["metrics"]["accuracy"] >= 0.85, name
        assert result["superclass"]["cloud"]["f1"] >= 0.8, name
        assert result["superclass"]["invalid"]["f1"] >= 0.8, name
        assert bool(result["notes"]) == name.endswith("l2a")
    # independent check of the whole chain for one model: sklearn on ukis values
    mask = patch_array.cloudmask.predict(model="ukis-6b-l1c", resolution=30).values
    expected = confusion_matrix(reference_labels.ravel(), mask.ravel(), labels=[0, 2, 1])
    assert results["ukis-6b-l1c"]["metrics"]["matrix"] == expected.tolist()
