"""The chunk kernel's last step (:mod:`xcloud.engine.blocks`): classes made from the model
grid's probabilities in one pass are exactly the classes of the probabilities ``predict``
returns, on both engine paths (shared tiles and per-chunk halos)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import xcloud
from xcloud.engine import blocks
from xcloud.synthetic import synthetic_scene

MODEL = "ukis-6b-l1c"  # 30 m: the probabilities are upsampled 3x to the 10 m input


def _classes_of(proba: np.ndarray) -> np.ndarray:
    """ukis' classes (argmax), no data where the probabilities are not finite."""
    scheme = xcloud.models.get(MODEL).info.scheme
    empty = ~np.isfinite(proba).all(axis=0)
    classes = np.asarray(scheme.values, np.uint8)[
        np.argmax(np.where(empty, 0.0, proba), axis=0)]
    classes[empty] = scheme.nodata.value
    return classes


@pytest.fixture(scope="module")
def scene():
    data = synthetic_scene(300, seed=3)
    data["B04"][40:70, 100:160] = np.nan  # no data: a hole the classes must keep
    return data.chunk({"y": 150, "x": 150})


@pytest.mark.parametrize("halo", [None, 7])  # shared tiles / per-chunk halos
def test_classes_equal_the_classified_probabilities(scene, halo, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = xcloud.predict(scene, model=MODEL, output="proba", halo=halo).values
        classes = xcloud.predict(scene, model=MODEL, halo=halo).values
        np.testing.assert_array_equal(classes, _classes_of(proba))
        assert (classes == xcloud.models.get(MODEL).info.scheme.nodata.value).any()
        # the other route (models with their own classify) gives the same classes
        monkeypatch.setattr(blocks, "classifies_by_argmax", lambda model: False)
        np.testing.assert_array_equal(xcloud.predict(scene, model=MODEL, halo=halo).values,
                                      classes)
