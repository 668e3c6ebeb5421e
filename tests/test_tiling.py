import numpy as np
import pytest

from xcloud.engine import tiling
from xcloud.engine.tiling import blend_window, floored_edge, predict_tiled, tile_starts
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


@pytest.mark.parametrize(("length", "dropped"), [(300, [-63]), (298, [-63, 297])])
def test_tiles_reaching_the_scene_only_at_the_weight_floor_are_left_out(length, dropped):
    """Tile -63 (of 64 px, overlap 28) covers only pixel 0, where its weight is the floor."""
    assert floored_edge(64, 28) == 1
    every = tile_starts(length, 64, 36, -63)
    kept = tile_starts(length, 64, 36, -63, scene=length)
    assert sorted(set(every) - set(kept)) == dropped and set(kept) < set(every)


@pytest.mark.parametrize("anchor", range(-60, 1, 3))
@pytest.mark.parametrize(("tile", "overlap"), [(64, 28), (64, 32), (256, 52), (40, 30)])
def test_kept_tiles_give_every_scene_pixel_more_than_the_floor(anchor, tile, overlap):
    length = 5 * tile + 7
    weight = np.zeros(length)
    ramp = tiling._ramp(tile, overlap)
    for start in tile_starts(length, tile, tile - overlap, anchor, scene=length):
        inside = slice(max(0, start), min(length, start + tile))
        weight[inside] = np.maximum(weight[inside], ramp[inside.start - start:inside.stop - start])
    assert weight.min() > 1e-3


def test_predicting_without_the_floored_tiles_changes_only_the_floor():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 98, 98)).astype(np.float32)
    kept, every = PixelSoftmax(tile_size=64), PixelSoftmax(tile_size=64)
    options = {"tile_size": 64, "overlap": 28, "batch_size": 4, "anchor": -63}
    lean = predict_tiled(kept, image, scene=(98, 98), **options)
    full = predict_tiled(every, image, **options)
    assert len(kept.calls) < len(every.calls)
    np.testing.assert_allclose(lean, full, atol=1e-5)
    np.testing.assert_allclose(lean, kept.predict_proba(image[None])[0], rtol=1e-5, atol=1e-6)
