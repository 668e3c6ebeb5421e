"""xcloud's numba evaluator of LightGBM text models gives lightgbm's own numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

lightgbm = pytest.importorskip("lightgbm", reason="needs: pip install 'xcloud[s2cloudless]'")

from xcloud.models import _lightgbm  # noqa: E402
from xcloud.models._lightgbm import TreeEnsemble, parse_model  # noqa: E402

from .conftest import need_data  # noqa: E402

# Five trees over two features, one per kind of split: NaN missing to the left (decision_type
# 10), zero missing to the right (4), a single leaf, NaN missing to the right (8), zero
# missing to the left (6); a threshold of 1e-40 that LightGBM's input zeroing decides.
HAND_MODEL = """tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=binary sigmoid:1.5
feature_names=a b
feature_infos=[-1:1] [-1:1]

Tree=0
num_leaves=3
num_cat=0
split_feature=0 1
threshold=0.5 1.0000000000000001e-40
decision_type=10 0
left_child=-1 -2
right_child=1 -3
leaf_value=0.25 -0.5 1
shrinkage=1

Tree=1
num_leaves=2
num_cat=0
split_feature=1
threshold=1
decision_type=4
left_child=-1
right_child=-2
leaf_value=-2 3
shrinkage=1

Tree=2
num_leaves=1
num_cat=0
split_feature=
threshold=
decision_type=
left_child=
right_child=
leaf_value=0.125
shrinkage=1

Tree=3
num_leaves=2
num_cat=0
split_feature=0
threshold=0
decision_type=8
left_child=-1
right_child=-2
leaf_value=-0.0625 0.0625
shrinkage=1

Tree=4
num_leaves=2
num_cat=0
split_feature=1
threshold=-1
decision_type=6
left_child=-1
right_child=-2
leaf_value=0.5 -0.25
shrinkage=1

end of trees
"""

# rows and their raw scores worked out by hand from LightGBM's rules (tree by tree in comments)
HAND_ROWS = np.array([
    [0.0, 0.0],          # .25 + 3 (zero: right) + .125 - .0625 + .5 (zero: left)
    [np.nan, 0.5],       # .25 (NaN: left) - 2 + .125 + .0625 (NaN: right) - .25
    [0.7, np.nan],       # -.5 (NaN -> 0 <= 1e-40) + 3 (NaN -> zero) + .125 + .0625 + .5
    [0.7, 1e-38],        # as above: |1e-38| <= 1e-35f reads as 0
    [0.7, 2.0],          # 1 + 3 + .125 + .0625 - .25
    [0.3, -1.0],         # .25 - 2 + .125 + .0625 + .5 (-1 <= -1)
    [0.5, 1.0],          # .25 (0.5 <= 0.5) - 2 (1 <= 1) + .125 + .0625 - .25
    [-np.inf, np.inf],   # .25 + 3 + .125 - .0625 - .25
    [-1e-38, -0.0],      # .25 + 3 + .125 - .0625 + .5
])
HAND_RAW = np.array([3.8125, -1.8125, 3.1875, 3.1875, 3.9375, -1.0625, -1.8125, 3.0625, 3.8125])


@pytest.fixture(scope="module")
def s2cloudless_file():
    from xcloud.models.s2cloudless import _booster_path

    return _booster_path()


@pytest.fixture(scope="module")
def booster_pair(s2cloudless_file):
    """(lightgbm Booster, TreeEnsemble) of s2cloudless's booster file."""
    return (lightgbm.Booster(model_file=str(s2cloudless_file)),
            _lightgbm.load_model(s2cloudless_file))


@pytest.fixture(scope="module")
def reference_features() -> np.ndarray:
    """The eo-learn reference scenes' pixels in s2cloudless's 10 bands (50500, 10) float32."""
    from s2cloudless.utils import MODEL_BAND_IDS

    scenes = np.load(need_data("imagery/eolearn_reference_scenes/REFERENCE_SCENES.npy"))
    return scenes[..., MODEL_BAND_IDS].reshape(-1, len(MODEL_BAND_IDS))


@pytest.fixture(scope="module")
def reference_lightgbm(booster_pair, reference_features) -> tuple[np.ndarray, np.ndarray]:
    """lightgbm's (raw score, probability) of the reference pixels (float32 and float64 alike:
    LightGBM reads both as doubles)."""
    booster = booster_pair[0]
    return (booster.predict(reference_features, raw_score=True),
            booster.predict(reference_features))


def _splits(ensemble: TreeEnsemble) -> tuple[np.ndarray, np.ndarray]:
    """(feature, threshold) of every split node."""
    inner = ~np.isnan(ensemble.threshold)
    return ensemble.feature[inner].astype(np.intp), ensemble.threshold[inner]


def _adversarial(ensemble: TreeEnsemble, base: np.ndarray, dtype: type,
                 seed: int = 0) -> np.ndarray:
    """Rows of ``base`` with one feature set to a threshold, its float neighbours or a
    special value (NaN, +-0, tiny values around LightGBM's 1e-35f zero cut, +-inf, huge)."""
    rng = np.random.default_rng(seed)
    feature, threshold = _splits(ensemble)
    value = threshold.astype(dtype)
    edges = np.concatenate([value, np.nextafter(value, dtype(np.inf)),
                            np.nextafter(value, dtype(-np.inf))])
    edge_features = np.tile(feature, 3)
    special = np.array([np.nan, 0.0, -0.0, 1e-38, -1e-38, _lightgbm.ZERO_THRESHOLD,
                        -_lightgbm.ZERO_THRESHOLD, np.nextafter(_lightgbm.ZERO_THRESHOLD, 1.0),
                        1e-30, np.inf, -np.inf, 3e38, -3e38], dtype)
    pick = rng.choice(edges.size, 8000, replace=False) if edges.size > 8000 else slice(None)
    rows = base[rng.integers(0, len(base), edges[pick].size)].astype(dtype)
    rows[np.arange(len(rows)), edge_features[pick]] = edges[pick]
    specials = base[rng.integers(0, len(base), 2000)].astype(dtype)
    columns = rng.integers(0, base.shape[1], (len(specials), 2))
    for k in range(2):  # two special values per row, in random columns
        specials[np.arange(len(specials)), columns[:, k]] = rng.choice(special, len(specials))
    return np.concatenate([rows, specials])


def _assert_same(booster, ensemble: TreeEnsemble, features: np.ndarray) -> None:
    np.testing.assert_array_equal(ensemble.predict_raw(features),
                                  booster.predict(features, raw_score=True))
    np.testing.assert_array_equal(ensemble.predict(features), booster.predict(features))


def test_booster_file_layout(booster_pair):
    booster, ensemble = booster_pair
    assert ensemble.n_trees == booster.num_trees() == 170
    assert ensemble.n_features == 10 and ensemble.sigmoid == 1.0
    assert ensemble.simple  # no missing-value splits: the fast kernel runs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_real_features_equal_lightgbm(booster_pair, reference_features, reference_lightgbm,
                                      dtype):
    ensemble = booster_pair[1]
    features = reference_features.astype(dtype)
    np.testing.assert_array_equal(ensemble.predict_raw(features), reference_lightgbm[0])
    np.testing.assert_array_equal(ensemble.predict(features), reference_lightgbm[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adversarial_features_equal_lightgbm(booster_pair, reference_features, dtype):
    booster, ensemble = booster_pair
    _assert_same(booster, ensemble, _adversarial(ensemble, reference_features, dtype))


def test_strided_and_integer_input(booster_pair, reference_features):
    booster, ensemble = booster_pair
    band_major = np.ascontiguousarray(reference_features[:3000].T)  # (bands, pixels)
    np.testing.assert_array_equal(ensemble.predict(band_major.T),
                                  booster.predict(band_major.T))
    digital = (reference_features[:3000] * 10000).astype(np.uint16)
    np.testing.assert_array_equal(ensemble.predict(digital),
                                  booster.predict(digital))


def test_hand_written_model_with_missing_values():
    ensemble = parse_model(HAND_MODEL)
    assert not ensemble.simple and ensemble.n_trees == 5 and ensemble.sigmoid == 1.5
    for dtype in (np.float64, np.float32):
        rows = HAND_ROWS.astype(dtype)
        np.testing.assert_array_equal(ensemble.predict_raw(rows), HAND_RAW)
        np.testing.assert_array_equal(ensemble.predict(rows), 1 / (1 + np.exp(-1.5 * HAND_RAW)))
    _assert_same(lightgbm.Booster(model_str=HAND_MODEL), ensemble, HAND_ROWS)


def test_hand_written_model_without_missing_values():
    # the same trees with missing type None everywhere run on the fast kernel: NaN reads as 0,
    # and 1e-38 is cut to 0 on the way in (so it goes left at the 1e-40 threshold)
    plain = HAND_MODEL
    for old, new in {"10 0": "2 0", "4": "0", "8": "0", "6": "2"}.items():
        plain = plain.replace(f"decision_type={old}\n", f"decision_type={new}\n")
    ensemble = parse_model(plain)
    assert ensemble.simple
    for dtype in (np.float64, np.float32):
        np.testing.assert_array_equal(ensemble.predict_raw(HAND_ROWS[2:4].astype(dtype)),
                                      [-2.5625, -2.5625])
        _assert_same(lightgbm.Booster(model_str=plain), ensemble, HAND_ROWS.astype(dtype))


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_trained_model_with_missing_values(zero_as_missing):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 4))
    x[:, :3][rng.random((3000, 3)) < 0.1] = np.nan  # the last feature has no missing values
    x[rng.random(x.shape) < 0.1] = 0.0
    y = (np.nan_to_num(x[:, 0], nan=2.0) + x[:, 1] ** 2 - (x[:, 2] == 0) > x[:, 3]).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1,
              "zero_as_missing": zero_as_missing, "num_threads": 1}
    booster = lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=15)
    ensemble = parse_model(booster.model_to_string())
    decision = ensemble.decision[~np.isnan(ensemble.threshold)]
    assert set(np.unique((decision >> 2) & 3)) == ({1} if zero_as_missing else {0, 2})
    for dtype in (np.float64, np.float32):
        _assert_same(booster, ensemble, _adversarial(ensemble, x, dtype, seed=2))


@pytest.mark.parametrize("model", ["booster", "hand"])
def test_serial_and_parallel_kernels_agree(booster_pair, reference_features, monkeypatch,
                                           model):
    monkeypatch.setattr(_lightgbm, "PARALLEL_MIN_ROWS", 0)
    ensemble = booster_pair[1] if model == "booster" else parse_model(HAND_MODEL)
    width = ensemble.n_features
    rows = np.resize(reference_features[:, :width], (3 * _lightgbm._CHUNK + 123, width))
    serial = ensemble.predict(rows, threads=1)
    np.testing.assert_array_equal(ensemble.predict(rows, threads=2), serial)
    np.testing.assert_array_equal(ensemble.predict(rows, threads=None), serial)


def test_categorical_split_raises():
    categorical = HAND_MODEL.replace("decision_type=4\n", "decision_type=1\n")
    with pytest.raises(ValueError, match="categorical"):
        parse_model(categorical)
    with pytest.raises(ValueError, match="categorical"):
        parse_model(HAND_MODEL.replace("num_leaves=2\nnum_cat=0", "num_leaves=2\nnum_cat=1", 1))


def test_bad_input_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        parse_model(HAND_MODEL).predict(np.zeros((4, 3)))


def test_s2cloudless_runtimes_agree(reference_features):
    from xcloud.models.registry import get

    scenes = reference_features.reshape(5, 101, 100, 10)[:2].transpose(0, 3, 1, 2)
    entry = get("s2cloudless")
    numba_model = entry.load(runtime="auto")
    assert numba_model.runtime == "numba"
    np.testing.assert_array_equal(numba_model.predict_proba(scenes),
                                  entry.load(runtime="lightgbm").predict_proba(scenes))
    with pytest.raises(ValueError, match="runtime"):
        entry.load(runtime="onnxruntime")
