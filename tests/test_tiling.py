import math

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


@pytest.mark.parametrize(("zoom", "factor"), [(1.0, 1), (10 / 30, 3), (10 / 20, 2), (10 / 60, 6),
                                              (10 / 15, None), (2.0, None)])
def test_one_dialect_for_the_model_grid(zoom, factor):
    """Whole factors divide exactly; other zooms agree with the float product."""
    from xcloud.engine.geometry import model_ceil, model_floor, to_model, whole_factor

    assert whole_factor(zoom) == factor
    for pixels in range(-50, 400):
        assert model_floor(pixels, zoom) == math.floor(pixels * zoom + 1e-9)
        assert model_ceil(pixels, zoom) == math.ceil(pixels * zoom - 1e-9)
        if factor:
            assert (model_floor(pixels, zoom), model_ceil(pixels, zoom)) == (
                pixels // factor, -(-pixels // factor))
    assert to_model((3, 7), zoom, margin=1) == (model_floor(3, zoom) - 1,
                                                model_ceil(7, zoom) + 1)


def test_chunk_grid_locates_chunks_halos_and_model_windows():
    from xcloud.engine.geometry import ChunkAxis, ChunkGrid

    grid = ChunkGrid.from_chunks(((100, 100, 50), (250,)), halo=(20, 20), zoom=1 / 3)
    assert grid.rows.starts == (0, 100, 200) and grid.rows.stops == (100, 200, 250)
    assert grid.block_origin(1, 0) == (80, -20) and grid.core(1, 0) == ((20, 120), (20, 270))
    assert grid.model_shape == (84, 84) and grid.model_extent == ((-6, 90), (-6, 90))
    assert grid.output_window(1, 0) == ((32, 68), (0, 84))
    assert grid.rows.owned(0, 32) == (-31, 35) and grid.rows.owned(2, 32) == (68, 84)
    assert grid.tiles_window(0, 0, 32) == ((-6, 67), (-6, 90))
    assert grid.core_in(1, 0, (32, 0)) == ((4, 104), (0, 250))
    edges = ChunkAxis.from_sizes((100, 100), halo=20, halo_at_edges=False)
    assert (edges.block_start(0), edges.block_start(1), edges.pad) == (0, 80, 0)
    assert edges.inside(-20, 140) == slice(20, 140) and edges.inside(180, 40) == slice(0, 20)


def test_grid_windows_crop_and_add_up():
    from xcloud.engine.geometry import GridWindow

    window = GridWindow((10, 20), np.ones((2, 4, 5)), np.array([[0, 0, 1, 1, 1]] * 4, float))
    assert window.crop(((0, 100), (20, 22))) is None  # no weight there
    assert window.crop(((0, 5), (0, 100))) is None  # no overlap
    part = window.crop(((12, 100), (21, 23)))
    assert part is not None and part.origin == (12, 21) and part.weight.shape == (2, 2)
    values, weight = np.zeros((2, 3, 3)), np.zeros((3, 3))
    part.add_to(values, (13, 21), weight)
    assert values[0].tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert weight.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
