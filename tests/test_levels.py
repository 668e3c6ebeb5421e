"""``xcloud.data.levels``: what files offer, which level each band is read from, the values.

The scenes are written here with rasterio: a 10 m band (B02, 512² px) and a 20 m band (B11,
256² px) as a COG with AVERAGE overviews, as JPEG 2000 with resolution levels (GDAL shows them
as overviews) and as JPEG 2000 without, named so that ``scene_item`` makes a STAC item of them.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest

pytest.importorskip("odc.stac")
rasterio = pytest.importorskip("rasterio")

from xcloud.data.levels import (  # noqa: E402
    FileLevels,
    choose_levels,
    file_levels,
    read_coarser,
)
from xcloud.data.load import load, recipe_of  # noqa: E402
from xcloud.data.resample import downsample_mean  # noqa: E402
from xcloud.data.sample import scene_item  # noqa: E402
from xcloud.errors import StacError  # noqa: E402

SIZE = 512  # 10 m pixels
ORIGIN = (300000.0, 5000040.0)
ENCODINGS = {
    "cog": {"driver": "COG", "BLOCKSIZE": 128, "RESAMPLING": "AVERAGE", "OVERVIEW_COUNT": 3,
            "COMPRESS": "DEFLATE"},
    "jp2": {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES", "RESOLUTIONS": 4,
            "BLOCKXSIZE": 256, "BLOCKYSIZE": 256},
    "jp2-flat": {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES",
                 "RESOLUTIONS": 1, "BLOCKXSIZE": 256, "BLOCKYSIZE": 256},
}


def _texture(size: int, seed: int) -> np.ndarray:
    """A smooth field with some detail, digital numbers 1000-5000 (never 0, the no data)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    field = 3000 + 1500 * np.sin(6 * x + 2 * y) * np.cos(4 * y)
    return (field + rng.normal(0, 60, field.shape)).clip(1000, 5000).astype(np.uint16)


def _ramp(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return (1000 + 8 * x + 6 * y).astype(np.uint16)


def write_scene(folder: Path, encoding: str, values: dict[str, np.ndarray]) -> Path:
    """Band files ``T33UUU_20170216T102101_<band>`` of ``values``, each at its band's native
    resolution, from one origin."""
    from rasterio.transform import from_origin

    from xcloud.data.bands import SENTINEL2_BANDS

    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".tif" if encoding == "cog" else ".jp2"
    for band, array in values.items():
        resolution = SENTINEL2_BANDS[band].resolution
        with rasterio.open(folder / f"T33UUU_20170216T102101_{band}{suffix}", "w",
                           height=array.shape[0], width=array.shape[1], count=1,
                           dtype="uint16", crs="EPSG:32633", nodata=0,
                           transform=from_origin(*ORIGIN, resolution, resolution),
                           **ENCODINGS[encoding]) as sink:
            sink.write(array, 1)
    return folder


def scene(tmp_path: Path, encoding: str, *, ramp: bool = False, chunks: int = 128):
    values = {"B02": _ramp(SIZE) if ramp else _texture(SIZE, 0),
              "B11": _ramp(SIZE // 2) if ramp else _texture(SIZE // 2, 1)}
    folder = write_scene(tmp_path / encoding, encoding, values)
    return load([scene_item(folder)], bands=["B02", "B11"], chunks=chunks), values


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    return {encoding: scene(root, encoding) for encoding in ENCODINGS}


def test_what_each_file_offers(scenes):
    offered = {encoding: file_levels(recipe_of(data).hrefs("B02")[0])
               for encoding, (data, _) in scenes.items()}
    assert offered["cog"].decimations[:2] == (2, 4) and not offered["cog"].wavelet
    assert offered["jp2"].decimations == (2, 4) and offered["jp2"].wavelet
    assert offered["jp2-flat"].decimations == () and offered["jp2-flat"].wavelet
    assert isinstance(offered["cog"], FileLevels) and offered["cog"].shape == (SIZE, SIZE)


@pytest.mark.parametrize(("encoding", "factor", "expected"), [
    ("cog", 4, {"B02": 4, "B11": 2}),  # whole overview pixels per coarse pixel: the coarsest
    ("cog", 8, {"B02": 8, "B11": 4}),
    ("cog", 3, {"B02": None, "B11": None}),  # a GeoTIFF overview must divide the coarse pixel
    ("jp2", 3, {"B02": 2, "B11": None}),  # 20 m for 30 m (two thirds); 40 m does not serve
    ("jp2", 8, {"B02": 2, "B11": 2}),  # at most a quarter of the coarse pixel where possible
    ("jp2", 16, {"B02": 4, "B11": 2}),
    ("jp2-flat", 8, {"B02": None, "B11": None}),  # no levels: full resolution, never decimated
])
def test_the_level_each_band_is_read_from(scenes, encoding, factor, expected):
    data, _ = scenes[encoding]
    choices = choose_levels(recipe_of(data), factor, ["B02", "B11"])
    chosen = {band: (c.decimation if c.index is not None else None)
              for band, c in choices.items()}
    assert chosen == expected


def test_cog_average_overviews_give_the_block_means(scenes):
    """... of the native pixels (a 20 m band's, not those of its bilinear 10 m version)."""
    data, values = scenes["cog"]
    coarse = read_coarser(data, 4)
    assert coarse.encoding["xcloud:levels"] == {"B02": 1, "B11": 0}
    for band, factor in (("B02", 4), ("B11", 2)):
        expected = downsample_mean(values[band] * 1e-4, factor)
        # GDAL rounds each overview to whole digital numbers (1e-4 reflectance), twice for 4x
        np.testing.assert_allclose(coarse[band].values[0], expected, atol=2.1e-4)


def test_a_full_resolution_read_gives_the_block_means_exactly(scenes):
    data, _ = scenes["jp2-flat"]
    coarse = read_coarser(data, 4)
    assert coarse.encoding["xcloud:levels"] == {"B02": None, "B11": None}
    fine = data.compute()
    for band in ("B02", "B11"):
        np.testing.assert_array_equal(coarse[band].values, downsample_mean(fine[band].values, 4))
    forced = read_coarser(scenes["cog"][0], 4, levels=False)
    assert forced.encoding["xcloud:levels"] == {"B02": None, "B11": None}


def test_jpeg2000_levels_are_taken_as_centred_on_their_first_pixel(tmp_path):
    """On a ramp a level-1 sample is the value at pixel 2i (measured): the footprint model
    gives the block means; GDAL's own footprint would be half a pixel off (4 digital numbers
    on this ramp)."""
    data, values = scene(tmp_path, "jp2", ramp=True)
    coarse = read_coarser(data, 4)
    assert coarse.encoding["xcloud:levels"]["B02"] == 0
    expected = downsample_mean(values["B02"] * 1e-4, 4)
    # the last coarse column and row clamp at the scene's edge; where a JPEG 2000 tile ends
    # (coarse row and column 63) its wavelet is mirrored: one digital number off
    error = np.abs(coarse["B02"].values[0, :-1, :-1] - expected[:-1, :-1])
    assert float(error.max()) < 1.5e-4 and float(np.median(error)) < 0.2e-4


def test_jpeg2000_levels_are_close_to_the_block_means(scenes):
    data, _ = scenes["jp2"]
    coarse = read_coarser(data, 8)
    expected = downsample_mean(data["B02"].values, 8)
    error = np.abs(coarse["B02"].values - expected)[..., 1:-1, 1:-1]
    assert float(np.mean(error / expected[..., 1:-1, 1:-1])) < 0.01


def test_the_coarse_grid_keeps_the_origin_dims_and_attributes(scenes):
    data, _ = scenes["cog"]
    coarse = read_coarser(data.isel(time=0), 3)
    assert coarse["B02"].dims == ("y", "x") and coarse.sizes["y"] == -(-SIZE // 3)
    assert float(coarse.x[0]) == ORIGIN[0] + 15.0 and float(coarse.y[0]) == ORIGIN[1] - 15.0
    assert "spatial_ref" in coarse.coords and "time" in coarse.coords
    assert coarse.attrs["source_items"] == data.attrs["source_items"]
    assert coarse.attrs == data.attrs


def test_a_window_is_read_on_its_own_grid(scenes):
    data, _ = scenes["cog"]
    window = data.isel(y=slice(40, 360), x=slice(8, 488))
    coarse = read_coarser(window, 4)
    assert float(coarse.x[0]) == ORIGIN[0] + 80 + 20 and coarse.sizes["x"] == 120
    expected = downsample_mean(window["B02"].values, 4)
    np.testing.assert_allclose(coarse["B02"].values, expected, atol=2.1e-4)


def test_data_that_load_did_not_make_are_refused(scenes):
    data, _ = scenes["cog"]
    with pytest.raises(StacError, match=r"xcloud\.load"):
        read_coarser(data * 1.0, 4)
    with pytest.raises(StacError, match=r"xcloud\.load"):
        read_coarser(data.compute(), 4)
    with pytest.raises(ValueError, match="factor"):
        read_coarser(data, 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rows", "columns", "factor"), [
    (slice(0, SIZE), slice(0, SIZE), 3),  # 3 loaded pixels = 1.5 pixels of the 20 m band
    (slice(41, 360), slice(7, 500), 3),  # a window starting inside a 20 m pixel
    (slice(1, 511), slice(2, 509), 4),
])
def test_a_band_without_a_serving_level_is_averaged_from_its_native_pixels(
        scenes, rows, columns, factor):
    """B11 (20 m, no JPEG 2000 level) read on its own grid and upsampled inside each coarse
    chunk's task: the same values as averaging the loaded (bilinear 10 m) band, to the bit,
    whatever the window; B02 (no levels at all) likewise."""
    data, _ = scenes["jp2-flat"]
    window = data.isel(y=rows, x=columns)
    coarse = read_coarser(window, factor, chunk=37)  # chunks that cut 20 m pixels in two
    assert coarse.encoding["xcloud:levels"] == {"B02": None, "B11": None}
    for band in ("B02", "B11"):
        expected = downsample_mean(window[band].values, factor)
        np.testing.assert_array_equal(coarse[band].values, expected)


@pytest.mark.parametrize("resampling", ["sinc", "nearest"])
def test_the_native_read_follows_load_s_resampling(tmp_path, resampling):
    folder = write_scene(tmp_path / "flat", "jp2-flat", {"B11": _texture(SIZE // 2, 3)})
    data = load([scene_item(folder)], bands=["B11"], chunks=96, resampling=resampling)
    coarse = read_coarser(data.isel(y=slice(5, 400), x=slice(3, 333)), 3)
    expected = downsample_mean(data["B11"].values[:, 5:400, 3:333], 3)
    np.testing.assert_array_equal(coarse["B11"].values, expected)


def test_the_native_read_is_one_task_per_chunk_on_the_band_s_own_grid(scenes):
    """No loaded-resolution array between tasks: the 20 m band is read on its 20 m grid and
    each coarse chunk is one task on the read blocks under it (no rechunking)."""
    data, _ = scenes["jp2-flat"]
    coarse = read_coarser(data[["B11"]], 3, chunk=64)
    graph = coarse["B11"].data.__dask_graph__()
    kinds = {name.rsplit("-", 1)[0] for name in graph.layers}
    assert not {"rechunk-merge", "rechunk-split", "upsample", "concatenate"} & kinds
    means = [name for name in graph.layers if name.startswith("full-mean-")]
    assert len(means) == 1 and len(graph.layers[means[0]]) == coarse["B11"].data.npartitions
    read = next(iter(graph.dependencies[means[0]]))
    blocks = dask.get(dict(graph), list(graph.layers[read].keys()))
    assert sum(block.size for block in blocks) == (SIZE // 2) ** 2  # the 20 m pixels, once
