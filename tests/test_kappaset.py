"""KappaSet: tiles written in the published layout and read back, samples, splits, mosaics."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xcloud.errors import DatasetError, OptionalDependencyError, XcloudWarning
from xcloud.training import kappaset
from xcloud.training.kappaset import (
    CM_VSM_SCALE,
    KAPPASET_L1C_FEATURES,
    KAPPASET_L2A_FEATURES,
    KappaSetDataset,
    find_tiles,
    mosaic,
    read_tile,
    synthetic_kappaset,
    write_tile,
)

L1C_PRODUCT = "S2B_MSIL1C_20200611T093039_N0209_R136_T35VNE_20200611T114106"
L2A_PRODUCT = "S2A_MSIL2A_20200615T100031_N0214_R122_T34VFM_20200615T120010"


def bands(level: str = "L1C", size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Random reflectances in [0, 0.5) for every feature of ``level``."""
    rng = np.random.default_rng(seed)
    names = KAPPASET_L1C_FEATURES if level == "L1C" else KAPPASET_L2A_FEATURES
    return {name: (rng.random((size, size)) / 2).astype(np.float32) for name in names}


def labels(size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 6, (size, size)).astype(np.uint8)


def raw_file(path: Path, variables: dict[str, np.ndarray], dims=("x", "y")) -> Path:
    """A NetCDF file written without write_tile's checks (dimensions named by size if the
    variables' shapes differ)."""
    same = len({np.shape(v) for v in variables.values()}) == 1

    def named(shape: tuple[int, ...]) -> tuple[str, ...]:
        return dims if same else tuple(f"{d}{n}" for d, n in zip(dims, shape, strict=True))

    path.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset({n: (named(np.shape(v)), v) for n, v in variables.items()}).to_netcdf(
        path, engine=kappaset._engine())
    return path


def compressed(encoding: dict) -> bool:
    return bool(encoding.get("zlib")) or encoding.get("compression") == "gzip"


@pytest.fixture(scope="module")
def synthetic_l1c(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kappaset_l1c")
    synthetic_kappaset(root, n_products=2, tiles_per_product=4, size=32, seed=0)
    return root


# --- one tile on disk ---------------------------------------------------------------------------


def test_write_tile_writes_the_published_layout_and_reads_it_back(tmp_path):
    features, label = bands("L1C", 16), labels(16)
    path = write_tile(tmp_path / "2020_06" / L1C_PRODUCT / "tile_3_7.nc", features, label,
                      product=L1C_PRODUCT)
    with xr.open_dataset(path, engine=kappaset._engine(), mask_and_scale=False) as raw:
        assert set(raw.data_vars) == {*KAPPASET_L1C_FEATURES, "Label"}
        assert {raw[name].dims for name in raw.data_vars} == {("x", "y")}
        assert {raw[name].dtype for name in KAPPASET_L1C_FEATURES} == {np.dtype("float32")}
        assert raw["Label"].dtype == np.uint8
        assert all(compressed(raw[name].encoding) for name in raw.data_vars)
        assert raw.attrs["product_name"] == L1C_PRODUCT
    tile = read_tile(path, level="L1C")
    for name, values in features.items():
        np.testing.assert_array_equal(tile[name].values, values)
    np.testing.assert_array_equal(tile["Label"].values, label)
    assert tile["B02"].dims == ("y", "x") and tile.attrs["level"] == "L1C"


def test_reader_goes_by_axis_position_not_by_dimension_names(tmp_path):
    features, label = bands("L2A"), labels()
    named_yx = raw_file(tmp_path / "yx" / "tile_0_0.nc", {**features, "Label": label},
                        dims=("y", "x"))
    named_xy = write_tile(tmp_path / "xy" / "tile_0_0.nc", features, label)
    for path in (named_yx, named_xy):
        tile = read_tile(path)
        assert tile.attrs["level"] == "L2A"
        np.testing.assert_array_equal(tile["AOT"].values, features["AOT"])
        np.testing.assert_array_equal(tile["Label"].values, label)


def test_find_tiles_parses_months_products_indices_and_levels(tmp_path):
    write_tile(tmp_path / "2020_06" / L1C_PRODUCT / "tile_3_7.nc", bands("L1C", 4), labels(4))
    write_tile(tmp_path / "June" / L2A_PRODUCT / "tile_0_1.nc", bands("L2A", 4), labels(4))
    cm_vsm = "S2A_MSIL1C_20200703T094041_N0209_R036_T35VLF_20200703T115001"
    write_tile(tmp_path / "2020_07" / cm_vsm / "tile_2_5" / "T35VLF_20200703T094041_tile_2_5.nc",
               bands("L1C", 4), labels(4))
    write_tile(tmp_path / "2020_08" / "unnamed" / "tile_1_0.nc", bands("L2A", 4), labels(4))
    raw_file(tmp_path / "2020_08" / "unnamed" / "bands.nc", {"B02": np.zeros((4, 4))})
    found = [(t.month, t.product, t.x, t.y, t.level) for t in find_tiles(tmp_path)]
    assert found == [
        ("2020_06", L1C_PRODUCT, 3, 7, "L1C"),
        ("2020_07", cm_vsm, 2, 5, "L1C"),
        ("2020_08", "unnamed", 1, 0, "L2A"),
        ("June", L2A_PRODUCT, 0, 1, "L2A"),
    ]
    assert [t.product for t in find_tiles(tmp_path, level="L2A")] == ["unnamed", L2A_PRODUCT]
    assert find_tiles(tmp_path)[0].offset() == (7 * 512, 3 * 512)
    assert find_tiles(tmp_path)[0].offset(512, order="yx") == (3 * 512, 7 * 512)


def test_missing_variables_are_all_named(tmp_path):
    features = {k: v for k, v in bands("L1C").items() if k not in ("B8A", "B10")}
    path = raw_file(tmp_path / "tile_0_0.nc", {**features, "Label": labels()})
    with pytest.raises(DatasetError, match=r"lacks variable\(s\) B8A, B10 \(it has B01"):
        read_tile(path, level="L1C")
    l2a = write_tile(tmp_path / "l2a" / "tile_0_0.nc", bands("L2A"), labels())
    with pytest.raises(DatasetError, match=r"B10 .*pass level='L2A'"):
        read_tile(l2a, level="L1C")
    unlabelled = raw_file(tmp_path / "nolabel" / "tile_0_0.nc", bands("L1C"))
    with pytest.raises(DatasetError, match=r"lacks variable\(s\) Label"):
        read_tile(unlabelled)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"B02": np.zeros((8, 8)), "Label": np.full((8, 8), 7, np.uint8)}, r"value\(s\) 7 "),
        ({"B02": np.zeros((8, 8)), "Label": np.full((8, 8), 1.5)}, "non-integer"),
        ({"B02": np.zeros((8, 6)), "Label": np.ones((8, 6), np.uint8)}, "square"),
        ({"B02": np.zeros((8, 8)), "Label": np.ones((4, 4), np.uint8)}, "differ in shape"),
    ],
)
def test_bad_tiles_are_refused(tmp_path, variables, message):
    path = raw_file(tmp_path / "tile_0_0.nc", variables)
    with pytest.raises(DatasetError, match=message):
        read_tile(path, features=["B02"])


def test_write_tile_refuses_what_the_layout_has_not(tmp_path):
    with pytest.raises(DatasetError, match=r"outside 0\.\.5"):
        write_tile(tmp_path / "tile_0_0.nc", bands(), np.full((8, 8), 9))
    with pytest.raises(DatasetError, match="not a KappaSet feature"):
        write_tile(tmp_path / "tile_0_0.nc", {"red": np.zeros((8, 8))}, labels())
    with pytest.raises(DatasetError, match="comparison masks are"):
        write_tile(tmp_path / "tile_0_0.nc", bands(), labels(), comparison={"SCL": labels()})


# --- values: the digital-number rule ------------------------------------------------------------


@pytest.mark.parametrize(("peak", "rescaled"), [(1.9, False), (2.0, False), (2.5, True),
                                                 (9000.0, True)])
def test_spectral_bands_are_divided_by_10000_only_above_2(tmp_path, peak, rescaled):
    features = {n: v * np.float32(peak) for n, v in bands("L2A").items()}  # below peak / 2
    features["B02"][3, 4] = peak
    features["AOT"] = np.full((8, 8), 0.2, np.float32)
    features["WVP"] = np.full((8, 8), 3.0, np.float32)  # above 2, but not a spectral band
    path = write_tile(tmp_path / "tile_0_0.nc", features, labels())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tile = read_tile(path, level="L2A")
    assert len([w for w in caught if issubclass(w.category, XcloudWarning)]) == int(rescaled)
    factor = 1e-4 if rescaled else 1.0
    np.testing.assert_allclose(tile["B02"].values, features["B02"] * factor, rtol=1e-6)
    np.testing.assert_array_equal(tile["WVP"].values, features["WVP"])
    assert ("rescaled" in tile.attrs) == rescaled


def test_explicit_scale_replaces_the_rule(tmp_path):
    features = {n: v * 9000 for n, v in bands("L1C").items()}
    path = write_tile(tmp_path / "tile_0_0.nc", features, labels())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tile = read_tile(path, level="L1C", scale=CM_VSM_SCALE)
    np.testing.assert_allclose(tile["B12"].values, features["B12"] * 6.5535, rtol=1e-6)


def test_explicit_scale_brings_aot_and_wvp_to_xcloud_units(tmp_path):
    """cm-vsm stores AOT and WVP as DN / 65535 like the bands; xcloud.load gives DN / 1000."""
    dn = {"AOT": 180.0, "WVP": 2500.0, "B02": 1200.0}
    features = {n: np.full((8, 8), dn.get(n, 900.0) / 65535, np.float32)
                for n in bands("L2A")}
    tile = read_tile(write_tile(tmp_path / "tile_0_0.nc", features, labels()), level="L2A",
                     scale=CM_VSM_SCALE)
    np.testing.assert_allclose(tile["AOT"].values, 0.18, rtol=1e-5)
    np.testing.assert_allclose(tile["WVP"].values, 2.5, rtol=1e-5)
    np.testing.assert_allclose(tile["B02"].values, 0.12, rtol=1e-5)


# --- samples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "channels"), [("L1C", 13), ("L2A", 14)])
def test_dataset_samples_have_the_channels_of_the_level(tmp_path, level, channels):
    synthetic_kappaset(tmp_path, n_products=1, tiles_per_product=2, level=level, size=16)
    dataset = KappaSetDataset(tmp_path, level=level)
    image, label = dataset[1]
    assert (len(dataset), dataset.n_features) == (2, channels)
    assert image.shape == (channels, 16, 16) and image.dtype == np.float32
    assert label.shape == (16, 16) and label.dtype == np.int64
    assert np.isfinite(image).all()
    with pytest.raises(DatasetError, match="no KappaSet tiles"):
        KappaSetDataset(tmp_path, level="L2A" if level == "L1C" else "L1C")


def test_tensors_batch_in_a_dataloader(synthetic_l1c):
    import torch

    dataset = KappaSetDataset(synthetic_l1c, as_tensor=True)
    image, label = dataset[0]
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    images, labels_ = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert tuple(images.shape) == (3, 13, 32, 32) and tuple(labels_.shape) == (3, 32, 32)


def test_normalization_options(tmp_path):
    features = bands("L1C")
    features["B03"][0, 0] = np.nan
    write_tile(tmp_path / "p" / "tile_0_0.nc", features, labels())
    raw = np.stack([features[n] for n in KAPPASET_L1C_FEATURES])
    low, high = np.full(13, 0.1, np.float32), np.full(13, 0.3, np.float32)
    image, _ = KappaSetDataset(tmp_path, normalization=(low, high))[0]
    expected = np.nan_to_num((raw - 0.1) / 0.2, nan=0.0)
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-6)
    assert image[2, 0, 0] == 0.0
    doubled, _ = KappaSetDataset(tmp_path, normalization=lambda x: 2 * x)[0]
    np.testing.assert_allclose(doubled, np.nan_to_num(2 * raw), rtol=1e-6)
    plain = KappaSetDataset(tmp_path)
    assert [r.tolist() for r in plain.normalization_range] == [[0.0] * 13, [1.0] * 13]
    with pytest.raises(DatasetError, match="callable"):
        _ = KappaSetDataset(tmp_path, normalization=np.sqrt).normalization_range
    with pytest.raises(DatasetError, match="exceed"):
        KappaSetDataset(tmp_path, normalization=(high, low))


def test_minmax_normalization_maps_most_valid_pixels_into_0_1(synthetic_l1c):
    dataset = KappaSetDataset(synthetic_l1c, normalization="minmax")
    low, high = dataset.normalization_range
    assert low.shape == high.shape == (13,) and np.all(high > low)
    samples = [dataset[i] for i in range(len(dataset))]
    valid = np.concatenate([image[:, label != 0] for image, label in samples], axis=1)
    assert 0.95 < np.mean((valid >= 0) & (valid <= 1)) < 0.995


def marked_tile(tmp_path: Path) -> Path:
    """A 16 x 16 tile whose only cloud pixel (row 2, column 5) is also marked in B02 and FMC."""
    features = {n: np.zeros((16, 16), np.float32) for n in KAPPASET_L1C_FEATURES}
    features["B02"][2, 5] = 1.0
    label = np.ones((16, 16), np.uint8)
    label[2, 5] = 4
    fmc = np.zeros((16, 16), np.uint8)
    fmc[2, 5] = 1
    return write_tile(tmp_path / "p" / "tile_0_0.nc", features, label, comparison={"FMC": fmc})


def marks(dataset: KappaSetDataset, draws: int = 24) -> list[tuple[int, ...]]:
    """Where the marked pixel lands in image, label and mask, for each draw."""
    positions = []
    for _ in range(draws):
        image, label, masks = dataset[0]
        image_at = np.unravel_index(np.argmax(image[1]), image[1].shape)
        label_at, mask_at = np.argwhere(label == 4), np.argwhere(masks["FMC"] == 1)
        assert len(label_at) == len(mask_at) == 1
        assert tuple(label_at[0]) == tuple(mask_at[0]) == tuple(int(i) for i in image_at)
        positions.append(tuple(int(i) for i in image_at))
    return positions


def test_augmentation_moves_image_label_and_masks_together(tmp_path):
    marked_tile(tmp_path)
    dataset = KappaSetDataset(tmp_path, with_comparison=True, augment=True, seed=3)
    positions = marks(dataset)
    square = {(a, b) for a in (2, 13) for b in (5, 10)} | {(b, a) for a in (2, 13)
                                                          for b in (5, 10)}
    assert set(positions) <= square and len(set(positions)) >= 4
    again = marks(KappaSetDataset(tmp_path, with_comparison=True, augment=True, seed=3))
    other = marks(KappaSetDataset(tmp_path, with_comparison=True, augment=True, seed=4))
    assert again == positions and other != positions
    assert set(marks(KappaSetDataset(tmp_path, with_comparison=True), 2)) == {(2, 5)}


def test_dataloader_workers_draw_their_own_augmentations(tmp_path, monkeypatch):
    marked_tile(tmp_path)
    dataset = KappaSetDataset(tmp_path, with_comparison=True, augment=True, seed=3)
    by_worker = {}
    for worker in ((0, 1000), (1, 1001)):
        monkeypatch.setattr(kappaset, "_torch_worker", lambda worker=worker: worker)
        by_worker[worker] = marks(dataset)
    assert by_worker[(0, 1000)] != by_worker[(1, 1001)]


def test_split_is_random_by_tile_reproducible_and_disjoint(tmp_path):
    synthetic_kappaset(tmp_path, n_products=2, tiles_per_product=5, size=16)
    dataset = KappaSetDataset(tmp_path, augment=True)
    train, val = dataset.split(0.2, seed=0)
    assert (len(train), len(val)) == (8, 2)
    paths = {t.path for t in train.tiles}, {t.path for t in val.tiles}
    assert not paths[0] & paths[1] and paths[0] | paths[1] == {t.path for t in dataset.tiles}
    assert train.augment and not val.augment
    assert [t.path for t in dataset.split(0.2, seed=0)[1].tiles] == [t.path for t in val.tiles]
    others = [{t.path for t in dataset.split(0.2, seed=s)[1].tiles} for s in range(1, 6)]
    assert any(other != paths[1] for other in others)
    train, val = dataset.split(0.5, seed=0, by="product")
    assert len({t.product for t in val.tiles}) == 1 and len(val) == 5
    assert not {t.product for t in train.tiles} & {t.product for t in val.tiles}


def test_comparison_masks_are_read_when_present(tmp_path):
    fmc, ss2c = labels(seed=1) % 5, labels(seed=2) % 2
    write_tile(tmp_path / "p" / "tile_0_0.nc", bands(), labels(),
               comparison={"FMC": fmc, "SS2C": ss2c})
    write_tile(tmp_path / "p" / "tile_1_0.nc", bands(), labels())
    with_masks = read_tile(tmp_path / "p" / "tile_0_0.nc", level="L1C")
    assert {"FMC", "SS2C"} <= set(with_masks.data_vars) and "MAJAC" not in with_masks
    np.testing.assert_array_equal(with_masks["SS2C"].values, ss2c)
    assert "FMC" not in read_tile(tmp_path / "p" / "tile_0_0.nc", level="L1C", comparison=False)
    dataset = KappaSetDataset(tmp_path, with_comparison=True)
    assert set(dataset[0][2]) == {"FMC", "SS2C"} and dataset[1][2] == {}
    np.testing.assert_array_equal(dataset[0][2]["FMC"], fmc)
    assert len(KappaSetDataset(tmp_path)[0]) == 2


# --- mosaic -------------------------------------------------------------------------------------


RAMP = np.arange(64, dtype=np.float32).reshape(8, 8) / 100  # pixel (r, c): (8 r + c) / 100


@pytest.fixture
def product(tmp_path) -> Path:
    """Tiles 0_0, 2_0 and 1_1 (X, Y) of 8 x 8 pixels; B02 = (10 X + Y + 1) / 100, B03 = RAMP."""
    folder = tmp_path / "2020_06" / L1C_PRODUCT
    for x, y in ((0, 0), (2, 0), (1, 1)):
        features = {**bands("L1C"), "B02": np.full((8, 8), (10 * x + y + 1) / 100), "B03": RAMP}
        write_tile(folder / f"tile_{x}_{y}.nc", features, np.full((8, 8), 1 + x))
    return folder


def test_mosaic_puts_tile_x_y_at_column_x_and_row_y(product):
    data = mosaic(product)
    assert dict(data.sizes) == {"y": 16, "x": 24} and data.attrs["tile_size"] == 8
    np.testing.assert_array_equal(data["B02"].values[0:8, 16:24], np.float32(0.21))
    np.testing.assert_array_equal(data["B02"].values[8:16, 8:16], np.float32(0.12))
    np.testing.assert_array_equal(data["B03"].values[8:16, 8:16], RAMP)
    np.testing.assert_array_equal(data["Label"].values[8:16, 8:16], 2)
    assert np.isnan(data["B02"].values[0:8, 8:16]).all()
    assert (data["Label"].values[0:8, 8:16] == 0).all()
    swapped = mosaic(product, order="yx")
    assert dict(swapped.sizes) == {"y": 24, "x": 16}
    np.testing.assert_array_equal(swapped["B02"].values[16:24, 0:8], np.float32(0.21))
    flipped = mosaic(product, flip_rows=True)
    np.testing.assert_array_equal(flipped["B03"].values[8:16, 8:16], RAMP[::-1])


def test_mosaic_is_georeferenced_with_a_transform(product):
    from affine import Affine

    grid = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0)
    data = mosaic(find_tiles(product), transform=grid, crs=32635)
    np.testing.assert_allclose(data.x.values[[0, -1]], [500005.0, 500235.0])
    np.testing.assert_allclose(data.y.values[[0, -1]], [5799995.0, 5799845.0])
    assert data.rio.crs.to_epsg() == 32635
    assert data.rio.transform() == grid
    plain = mosaic(product, transform=(10, 0, 500000, 0, -10, 5800000))
    np.testing.assert_array_equal(plain.x.values, data.x.values)
    assert "spatial_ref" not in plain.coords


def test_mosaic_without_rioxarray_writes_a_spatial_ref(product, monkeypatch):
    monkeypatch.setitem(sys.modules, "rioxarray", None)
    data = mosaic(product, transform=(10, 0, 500000, 0, -10, 5800000), crs=32635)
    reference = data["spatial_ref"].attrs
    assert reference["GeoTransform"] == "500000.0 10.0 0.0 5800000.0 0.0 -10.0"
    assert '"EPSG",32635' in reference["crs_wkt"]
    assert data["B02"].attrs["grid_mapping"] == "spatial_ref"


def test_mosaic_refuses_what_it_cannot_place(product, tmp_path):
    with pytest.raises(DatasetError, match="not 512"):
        mosaic(product, tile_size=512)
    with pytest.raises(DatasetError, match="crs needs transform"):
        mosaic(product, crs=32635)
    with pytest.raises(DatasetError, match="north-up"):
        mosaic(product, transform=(10, 1, 500000, 0, -10, 5800000))
    write_tile(tmp_path / "2020_06" / L2A_PRODUCT / "tile_0_0.nc", bands("L2A"), labels())
    with pytest.raises(DatasetError, match="one product"):
        mosaic(find_tiles(tmp_path))


# --- generated tiles ----------------------------------------------------------------------------


def test_synthetic_kappaset_has_the_layout_and_learnable_classes(synthetic_l1c):
    pattern = (r"2020_\d\d/S2[AB]_MSIL1C_2020\d{4}T\d{6}_N0209_R\d{3}_T\d\d[A-Z]{3}_"
               r"2020\d{4}T\d{6}/tile_[01]_[01]\.nc")
    tiles = find_tiles(synthetic_l1c)
    assert len(tiles) == 8 and {t.level for t in tiles} == {"L1C"}
    assert all(re.fullmatch(pattern, t.path.relative_to(synthetic_l1c).as_posix()) for t in tiles)
    dataset = KappaSetDataset(synthetic_l1c)
    pixels = [dataset[i] for i in range(len(dataset))]
    image = np.concatenate([p[0].reshape(13, -1) for p in pixels], axis=1)
    label = np.concatenate([p[1].ravel() for p in pixels])
    assert set(np.unique(label)) == {0, 1, 2, 3, 4, 5}
    blue, nir = image[1], image[7]
    assert blue[label == 4].mean() > blue[label == 3].mean() > blue[label == 1].mean() + 0.05
    assert nir[label == 2].mean() < 0.7 * nir[label == 1].mean()
    # Spectra alone tell the four classes apart: nearest class mean of the first product's
    # pixels classifies the second product's.
    half = image.shape[1] // 2
    centroids = np.stack([image[:, :half][:, label[:half] == c].mean(1) for c in (1, 2, 3, 4)])
    known = np.isin(label[half:], [1, 2, 3, 4])
    pixels, truth = image[:, half:][:, known].T, label[half:][known]
    nearest = np.argmin(((pixels[:, None] - centroids[None]) ** 2).sum(-1), axis=1) + 1
    assert np.mean(nearest == truth) > 0.9


def test_synthetic_missing_corner_is_zero_or_nan_and_generation_is_seeded(synthetic_l1c,
                                                                          tmp_path):
    first, second = (t for t in find_tiles(synthetic_l1c) if (t.x, t.y) == (0, 0))
    for tile, fill_is_nan in ((first, False), (second, True)):
        data = read_tile(tile.path, level="L1C")
        missing = data["Label"].values == 0
        assert missing.any()
        values = data["B04"].values[missing]
        assert np.isnan(values).all() if fill_is_nan else (values == 0).all()
        assert np.isfinite(data["B04"].values[~missing]).all()
    again = synthetic_kappaset(tmp_path, n_products=2, tiles_per_product=4, size=32, seed=0)
    np.testing.assert_array_equal(read_tile(again[0])["Label"].values,
                                  read_tile(find_tiles(synthetic_l1c)[0].path)["Label"].values)


# --- plumbing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "engine"),
    [({"h5netcdf", "h5py", "netCDF4"}, "netcdf4"), ({"h5netcdf", "h5py"}, "h5netcdf"),
     ({"netCDF4"}, "netcdf4"), ({"h5netcdf"}, None)],
)
def test_netcdf_engine_needs_h5py_for_h5netcdf(monkeypatch, installed, engine):
    monkeypatch.setattr(kappaset, "_installed", lambda module: module in installed)
    if engine is None:
        with pytest.raises(OptionalDependencyError, match=r"xcloud\[training\]"):
            kappaset._engine()
    else:
        assert kappaset._engine() == engine


def test_training_package_imports_without_torch():
    code = ("import sys, xcloud.training as t; t.KappaSetDataset; t.synthetic_kappaset; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
