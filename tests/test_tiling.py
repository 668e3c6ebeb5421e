import numpy as np
import pytest

from xcloud.engine.tiling import blend_window, predict_tiled, tile_starts
from xcloud.models.classes import UKIS_SCHEME
from xcloud.models.protocol import BaseCloudModel, ModelInfo


class PixelSoftmax(BaseCloudModel):
    """Per-pixel softmax of a fixed linear map: its result does not depend on tiling."""

    def __init__(self, tile_size=None):
        self.info = ModelInfo("pixel-softmax", "0", ("B02", "B03"), 10.0, UKIS_SCHEME,
                              tile_size=tile_size)
        self.weights = np.array([[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]], np.float32)
        self.calls = []

    def predict_proba(self, batch):
        self.calls.append(batch.shape)
        logits = np.einsum("kc,nchw->nkhw", self.weights, batch)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("origin", [0, 7, 100, -13])
def test_tiles_cover_the_array(origin):
    starts = tile_starts(300, 64, 48, -16, origin)
    assert starts[0] <= 0 and starts[-1] + 64 >= 300
    assert set(np.diff(starts)) == {48}


def test_neighbouring_windows_cut_the_same_tiles():
    left = {s + 0 for s in tile_starts(300, 64, 48, -16, origin=0)}
    right = {s + 150 for s in tile_starts(300, 64, 48, -16, origin=150)}
    shared = [s for s in left if s >= 150 and s + 64 <= 300]
    assert len(shared) >= 2 and all(s in right for s in shared)


def test_blend_window_is_smooth_and_positive():
    window = blend_window(64, 64, 16)
    assert window.min() > 0 and window.max() == pytest.approx(1)
    assert window[32, 32] == 1 and window[0, 32] < 0.05
    assert np.all(np.diff(window[:16, 32]) > 0)


@pytest.mark.parametrize(("shape", "origin"), [((70, 90), (0, 0)), ((200, 130), (33, -5))])
def test_blending_reproduces_a_pixel_model(shape, origin):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    model = PixelSoftmax(tile_size=64)
    blended = predict_tiled(model, image, tile_size=64, overlap=16, batch_size=3, origin=origin)
    direct = model.predict_proba(image[None])[0]
    np.testing.assert_allclose(blended, direct, rtol=1e-5, atol=1e-6)
    assert all(call[0] <= 3 and call[-2:] == (64, 64) for call in model.calls[:-1])
