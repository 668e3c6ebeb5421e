"""The ``.cloudmask`` accessors: one per xarray type, each offering what works on it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import xcloud
from xcloud.accessor import CloudMaskArray, CloudMaskBase, CloudMaskDataset
from xcloud.synthetic import synthetic_scene


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene(64)


def test_each_xarray_type_has_its_accessor(scene):
    assert type(scene.cloudmask) is CloudMaskDataset
    assert type(scene["B02"].cloudmask) is CloudMaskArray
    for name in ("predict", "to_zarr"):
        assert hasattr(scene.cloudmask, name) and hasattr(scene["B02"].cloudmask, name)
    for name in ("plot", "fraction"):  # they need one class mask, not a Dataset
        assert not hasattr(scene.cloudmask, name)
        assert hasattr(scene["B02"].cloudmask, name)


def without_first(function) -> list[tuple[str, object, object]]:
    parameters = list(inspect.signature(function).parameters.values())[1:]
    return [(p.name, p.kind, p.default) for p in parameters]


@pytest.mark.parametrize(("method", "function"), [
    (CloudMaskBase.predict, xcloud.predict), (CloudMaskBase.to_zarr, xcloud.to_zarr)])
def test_accessor_methods_have_the_functions_signatures(method, function):
    """Real signatures (no **kwargs): the same names, kinds and defaults as the function."""
    assert without_first(method) == without_first(function)


def test_accessor_predict_and_fraction_equal_the_functions(scene):
    mask = scene.cloudmask.predict(model="s2cloudless")
    np.testing.assert_array_equal(mask.values, xcloud.predict(scene, model="s2cloudless").values)
    fractions = mask.cloudmask.fraction(by_time=False)
    assert float(fractions.sum()) == pytest.approx(1.0)
