"""Shared tiles: every lattice tile runs once, and chunked masks equal whole-image masks."""

import threading

import dask
import numpy as np
import pytest
import xarray as xr

from xcloud.engine import clear_cache, tile_once
from xcloud.engine.predict import predict
from xcloud.engine.tiling import tile_starts
from xcloud.models.classes import UKIS_SCHEME
from xcloud.models.protocol import BaseCloudModel, ModelInfo, Normalization
from xcloud.models.registry import ModelEntry, register, unregister

TILE, OVERLAP = 32, 8
REGISTERED: list[str] = []


@pytest.fixture(autouse=True)
def _forget_test_models():
    yield
    while REGISTERED:
        unregister(REGISTERED.pop())


class ContextModel(BaseCloudModel):
    """Not shift invariant: a 5 x 5 box mean of the input plus a ramp across the tile, so any
    tile cut off the scene lattice, or padded differently, changes the output."""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.tiles = 0
        self._lock = threading.Lock()

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.tiles += batch.shape[0]
        padded = np.pad(batch, [(0, 0), (0, 0), (2, 2), (2, 2)], mode="edge")
        box = sum(padded[:, :, dy:dy + batch.shape[2], dx:dx + batch.shape[3]]
                  for dy in range(5) for dx in range(5)) / 25
        ramp = np.linspace(-1, 1, batch.shape[3], dtype=np.float32)
        logits = np.stack([4 * box[:, 0] + ramp, 4 * box[:, 1] - ramp,
                           3 * (batch[:, 0] - batch[:, 1])], axis=1)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _register(name: str, resolution: float, *, tile: int = TILE, overlap: int = OVERLAP,
              anchor: int | None = None) -> ContextModel:
    info = ModelInfo(name, "0", ("B02", "B03"), resolution, UKIS_SCHEME,
                     normalization=Normalization("none"), tile_size=tile, tile_overlap=overlap,
                     tile_anchor=anchor)
    model = ContextModel(info)
    register(ModelEntry(info=info, loader=lambda **_: model), overwrite=True)
    REGISTERED.append(name)
    clear_cache()
    return model


def _scene(height: int, width: int, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    smooth = rng.random((2, height // 8 + 2, width // 8 + 2)).repeat(8, 1).repeat(8, 2)
    values = (0.3 * smooth[:, :height, :width] + 0.2 * rng.random((2, height, width)))
    return xr.DataArray(values.astype(np.float32), dims=("band", "y", "x"),
                        coords={"band": ["B02", "B03"], "y": 5000 - 10.0 * np.arange(height),
                                "x": 300000 + 10.0 * np.arange(width)})


def _unique_tiles(height: int, width: int, factor: int, tile: int = TILE,
                  overlap: int = OVERLAP, anchor: int = -OVERLAP) -> int:
    counts = [len(tile_starts(-(-n // factor), tile, tile - overlap, anchor,
                              scene=-(-n // factor))) for n in (height, width)]
    return counts[0] * counts[1]


def _run(scene: xr.DataArray, name: str, chunks: int | tuple, output: str = "class"):
    with dask.config.set(scheduler="threads"):
        return predict(scene.chunk({"y": chunks, "x": chunks}), model=name, output=output,
                       resolution=10).compute()


@pytest.mark.parametrize(("resolution", "factor", "chunks"), [
    (10.0, 1, 70), (10.0, 1, (90, 70, 45, 95)), (30.0, 3, 120), (30.0, 3, (130, 110, 61)),
])
def test_each_tile_runs_once_and_chunks_equal_the_whole(resolution, factor, chunks):
    height, width = (300, 300) if factor == 1 else (301, 301)
    scene, name = _scene(height, width), f"context-{factor}"
    model = _register(name, resolution)
    whole = _run(scene, name, max(height, width))
    model.tiles = 0
    chunked = _run(scene, name, chunks)
    assert chunked.chunks is None and len(chunked.x) == width
    assert model.tiles == _unique_tiles(height, width, factor)
    np.testing.assert_array_equal(chunked.values, whole.values)
    classes = np.unique(whole.values)
    assert len(classes) == 3  # the test model is not trivially constant


def test_tiles_reaching_the_scene_only_at_the_weight_floor_are_not_run():
    """Tile -63 (64 px, overlap 28) would cover only the scene's first row/column, where its
    blending weight is the floor: no chunk runs it, and chunks still equal the whole."""
    scene, name = _scene(298, 298), "context-floor"
    model = _register(name, 10.0, tile=64, overlap=28, anchor=-63)
    whole = _run(scene, name, 298)
    model.tiles = 0
    chunked = _run(scene, name, 100)
    assert model.tiles == _unique_tiles(298, 298, 1, 64, 28, -63) == 9 * 9
    assert len(tile_starts(298, 64, 36, -63)) == 11
    np.testing.assert_array_equal(chunked.values, whole.values)
    with dask.config.set(scheduler="threads"):  # the per-chunk engine leaves out the same tiles
        per_chunk = predict(scene.chunk({"y": 100, "x": 100}), model=name, resolution=10,
                            halo=64).compute()
    np.testing.assert_array_equal(per_chunk.values, whole.values)


def test_probabilities_match_the_whole_image():
    scene = _scene(200, 260, seed=3)
    _register("context-proba", 10.0)
    whole = _run(scene, "context-proba", 260, output="proba")
    chunked = _run(scene, "context-proba", 66, output="proba")
    np.testing.assert_allclose(chunked.values, whole.values, rtol=0, atol=2e-7)
    np.testing.assert_allclose(whole.sum("class").values, 1, atol=1e-5)


def test_old_path_runs_border_tiles_twice():
    """The control: with a smaller halo the per-chunk engine runs, and reruns shared tiles."""
    scene = _scene(300, 300)
    model = _register("context-halo", 10.0)
    with dask.config.set(scheduler="threads"):
        predict(scene.chunk({"y": 100, "x": 100}), model="context-halo", resolution=10,
                halo=TILE).compute()
    assert model.tiles > _unique_tiles(300, 300, 1)


def test_supports_only_tiled_integer_zooms_with_the_default_halo():
    big = [(-774, 5000 + 774)] * 2
    assert tile_once.supports(256, 1.0, 258, 258, padded=big)
    assert tile_once.supports(256, 1 / 3, 774, 774, padded=big)
    assert tile_once.supports(256, 1 / 3, 900, 774, padded=big)  # a wider halo
    assert not tile_once.supports(None, 1.0, 0, 0, padded=big)
    assert not tile_once.supports(256, 2.0, 129, 129, padded=big)
    assert not tile_once.supports(256, 2 / 3, 387, 387, padded=big)
    assert not tile_once.supports(256, 1.0, 100, 258, padded=big)
    # a padded scene without one whole 30 m pixel along an axis (1 px at 10 m, padded by 1)
    assert not tile_once.supports(256, 1 / 3, 774, 774, padded=[(-1, 2), (-774, 5774)])
    assert tile_once.supports(256, 1 / 3, 774, 774, padded=[(-2, 4), (-774, 5774)])
    assert tile_once.min_chunk(256, 1.0) == 258 and tile_once.min_chunk(256, 1 / 3) == 780


def test_all_nodata_chunks_run_no_tiles():
    scene = _scene(300, 300)
    scene[:, :150, :] = np.nan
    model = _register("context-empty", 10.0)
    mask = _run(scene, "context-empty", 100)
    assert (mask.values[:150 - TILE] == UKIS_SCHEME.nodata.value).all()
    assert 0 < model.tiles < _unique_tiles(300, 300, 1)


@pytest.mark.parametrize(("height", "width", "chunks"),
                         [(1, 3, 2), (2, 1, 1), (1, 1, 1), (4, 40, 5)])
def test_images_smaller_than_a_model_pixel_or_the_halo(height, width, chunks):
    scene = _scene(height, width, seed=5)
    _register("context-tiny", 30.0)
    whole = _run(scene, "context-tiny", max(height, width))
    chunked = _run(scene, "context-tiny", chunks)
    assert whole.shape == (height, width)
    np.testing.assert_array_equal(chunked.values, whole.values)


@pytest.mark.parametrize("halo", [None, 0])
def test_the_input_is_never_written_to(halo):
    """Models without normalisation see the input's own memory: no-data filling must copy."""
    scene = _scene(120, 120)
    scene[0, :10, :10] = np.nan  # some bands only: no data with invalid="nodata"
    before = scene.values.copy()
    _register("context-readonly", 10.0)
    with dask.config.set(scheduler="sync"):
        mask = predict(scene.chunk({"y": 60, "x": 60}), model="context-readonly",
                       resolution=10, halo=halo, invalid="nodata").compute()
    np.testing.assert_array_equal(scene.values, before)
    assert (mask.values[:10, :10] == UKIS_SCHEME.nodata.value).all()


@pytest.mark.parametrize("factor", [1, 3])
def test_each_pixel_is_normalised_once(monkeypatch, factor):
    """Chunks exchange model-grid sums, not halos: the no-data check and normalisation run
    once per pixel of the scene padded at its edges."""
    seen = []
    original = tile_once.normalized_block

    def counting(image, task, region=None):
        seen.append(image.shape[-2] * image.shape[-1])
        return original(image, task, region)

    monkeypatch.setattr(tile_once, "normalized_block", counting)
    _register(f"context-once-{factor}", 10.0 * factor)
    height, width = 301, 250
    _run(_scene(height, width), f"context-once-{factor}", 130)
    depth = (TILE + 2) * factor  # the default halo pads each edge
    assert sum(seen) == (height + 2 * depth) * (width + 2 * depth)


def test_chunks_inside_the_scene_are_prepared_from_the_input_itself():
    """Only the chunks at the scene's edges go through the padding layers: inside, ``prepare``
    reads the input's chunk, with no pass-through task per chunk."""
    from collections import Counter

    from dask.core import get_dependencies

    _register("context-direct", 10.0)
    mask = predict(_scene(300, 300).chunk({"y": 75, "x": 75}), model="context-direct",
                   resolution=10)
    graph = dict(mask.data.__dask_graph__())
    sources = Counter(
        dependency[0] for key in graph
        if isinstance(key, tuple) and key[0].startswith("xcloud-prepare-")
        for dependency in get_dependencies(graph, key))
    assert sorted(sources.values()) == [4 * 4, 6 * 6 - 4 * 4]  # 4 x 4 chunks, padded 6 x 6


@pytest.mark.parametrize("output", ["class", "proba"])
def test_the_engine_makes_the_output_blocks_themselves(output):
    """No slicing task per chunk after the engine's: its tasks make (time, y, x) class blocks
    and (time, class, y, x) probability blocks."""
    _register("context-blocks", 10.0)
    scene = _scene(150, 150).expand_dims(time=[np.datetime64("2024-06-01")])
    result = predict(scene.chunk({"y": 75, "x": 75}), model="context-blocks", resolution=10,
                     output=output)
    assert result.data.name.startswith("xcloud-context-blocks-")
    assert result.dims == (("time", "y", "x") if output == "class"
                           else ("time", "class", "y", "x"))
    with dask.config.set(scheduler="threads"):
        assert result.compute().shape == result.shape


@pytest.mark.parametrize("chunks", [300, 70, (130, 110, 60)])
def test_mean_blend_is_a_plain_sliding_window_average(chunks):
    """tile_blend="mean" on a given lattice computes what an authors' sliding window computes
    (SEnSeI-v2's SlidingWindow: every patch on a stride, overlaps averaged equally), chunked or
    whole; the default ramp blend does not."""
    tile, stride, anchor = 64, 32, -16
    scene, name = _scene(300, 300), "context-mean"
    model = _register(name, 10.0, tile=tile, overlap=tile - stride, anchor=anchor)
    image = scene.values
    total = np.zeros((3, 300, 300))
    count = np.zeros((300, 300))
    inside = [s for s in range(anchor, 300, stride) if s >= 0 and s + tile <= 300]
    for y in inside:
        for x in inside:
            total[:, y:y + tile, x:x + tile] += model.predict_proba(
                image[None, :, y:y + tile, x:x + tile])[0]
            count[y:y + tile, x:x + tile] += 1
    # pixels all of whose lattice tiles lie inside the scene
    covered = [p for p in range(300)
               if all(s in inside for s in range(anchor, 300, stride) if s <= p < s + tile)]
    window = np.ix_(covered, covered)
    expected = (total / np.maximum(count, 1))[(slice(None), *window)]
    with dask.config.set(scheduler="threads"):
        mean = predict(scene.chunk({"y": chunks, "x": chunks}), model=name, output="proba",
                       resolution=10, tile_blend="mean").compute()
        ramp = predict(scene, model=name, output="proba", resolution=10)
    np.testing.assert_allclose(mean.values[(slice(None), *window)], expected, atol=1e-6)
    assert np.abs(ramp.values[(slice(None), *window)] - expected).max() > 1e-3
    with pytest.raises(ValueError, match="tile_blend"):
        predict(scene, model=name, tile_blend="median")
