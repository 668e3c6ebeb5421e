"""The ukis-csmask networks: a faithful torch port, agreement with ukis-csmask, accuracy."""

import warnings

import numpy as np
import pytest

pytest.importorskip("ukis_csmask", reason="ukis models need: pip install 'xcloud[ukis]'")
ort = pytest.importorskip("onnxruntime")

from sklearn.metrics import cohen_kappa_score  # noqa: E402

from xcloud.models import get  # noqa: E402
from xcloud.models._onnx_import import (  # noqa: E402
    efficientnet_unet_from_onnx,
    onnx_graph_as_float32,
)
from xcloud.models.ukis import UkisModel  # noqa: E402

from .conftest import UKIS_BANDS  # noqa: E402


@pytest.fixture(scope="module")
def model_6b() -> UkisModel:
    return get("ukis-6b-l1c").load(runtime="torch")


@pytest.fixture(scope="module")
def patch_tiles(labelled_patch, model_6b) -> np.ndarray:
    image = model_6b.info.normalization.apply(labelled_patch["img"].transpose(2, 0, 1))
    return np.stack([image[:, :256, :256], image[:, 256:, 256:], image[:, 100:356, 50:306]])


def test_torch_port_matches_onnxruntime(model_6b, patch_tiles):
    import torch

    network = efficientnet_unet_from_onnx(model_6b.weights)
    with torch.inference_mode():
        logits = network(torch.from_numpy(patch_tiles)).numpy()
    float32 = ort.InferenceSession(onnx_graph_as_float32(model_6b.weights),
                                   providers=["CPUExecutionProvider"])
    reference = float32.run(None, {"input": patch_tiles})[0]
    assert np.abs(logits - reference).max() <= 1e-3
    shipped = ort.InferenceSession(str(model_6b.weights), providers=["CPUExecutionProvider"])
    as_shipped = shipped.run(None, {"input": patch_tiles})[0]
    # the shipped graph computes in float16: differences are float16 rounding, classes agree
    assert np.abs(logits - as_shipped).max() <= 0.05 * np.abs(as_shipped).max()
    assert (logits.argmax(1) == as_shipped.argmax(1)).mean() >= 0.999


def test_runtimes_agree(model_6b, patch_tiles):
    onnx_model = get("ukis-6b-l1c").load(runtime="onnxruntime")
    torch_proba = model_6b.predict_proba(patch_tiles)
    onnx_proba = onnx_model.predict_proba(patch_tiles)
    assert np.abs(torch_proba - onnx_proba).max() < 0.01


def test_predict_agrees_with_csmask(labelled_patch, patch_array):
    from ukis_csmask.mask import CSmask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CSmask(labelled_patch["img"], band_order=UKIS_BANDS, product_level="l1c").csm
    mask = patch_array.cloudmask.predict(model="ukis-6b-l1c", resolution=30)
    assert (mask.values == reference[..., 0]).mean() >= 0.995


@pytest.mark.parametrize(
    ("name", "bar"),
    [("ukis-6b-l1c", 0.60), ("ukis-6b-l2a", 0.60), ("ukis-4b-l1c", 0.50), ("ukis-4b-l2a", 0.50)],
)
def test_kappa_against_labels(name, bar, patch_array, reference_labels):
    mask = patch_array.cloudmask.predict(model=name, resolution=30)
    kappa = cohen_kappa_score(reference_labels.ravel(), mask.values.ravel())
    assert kappa >= bar, f"{name}: kappa {kappa:.3f}"


def test_wrong_weights_file_is_refused(tmp_path):
    from xcloud.errors import MissingWeightsError, WeightsError

    with pytest.raises(MissingWeightsError):
        get("ukis-6b-l1c").load(weights=tmp_path / "absent.onnx")
    four_band = get("ukis-4b-l1c").load(runtime="onnxruntime").weights
    with pytest.raises(WeightsError, match="does not match"):
        get("ukis-6b-l1c").load(weights=four_band, runtime="onnxruntime")


def test_torch_runtime_refuses_mismatched_weights():
    from xcloud.errors import WeightsError

    four_band = get("ukis-4b-l1c").load(runtime="onnxruntime").weights
    with pytest.raises(WeightsError, match="does not match"):
        get("ukis-6b-l1c").load(weights=four_band, runtime="torch")
