"""Plots of masks (``mask.cloudmask.plot``) and class fractions (``mask.cloudmask.fraction``)."""

from __future__ import annotations

import io
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import xcloud  # noqa: F401  (registers the accessor)
from xcloud.errors import DatasetError, OptionalDependencyError
from xcloud.models.registry import get
from xcloud.outputs import cf
from xcloud.outputs.plot import class_fractions, save_plot
from xcloud.synthetic import synthetic_scene

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg", force=True)
plt = pytest.importorskip("matplotlib.pyplot")

TIMES = np.array(["2024-06-01T10:00", "2024-06-11T10:00", "2024-06-21T10:00"],
                 dtype="datetime64[ns]")
SIZE = 64
ATTRS = cf.mask_attrs(get("ukis-6b-l1c").info)  # clear 0, cloud 1, cloud_shadow 2, no_data 255


def _labels() -> np.ndarray:
    """Three time steps: random classes with some no data; the last step has no data at all."""
    rng = np.random.default_rng(7)
    labels = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(len(TIMES), SIZE, SIZE),
                        p=[0.5, 0.25, 0.15, 0.1])
    labels[1, :, : SIZE // 2] = 0  # a large clear block, a large shadow block
    labels[1, :, SIZE // 2 :] = 2
    labels[2] = 255
    return labels


@pytest.fixture(scope="module")
def scene() -> xr.Dataset:
    return synthetic_scene(SIZE, seed=5)


@pytest.fixture(scope="module")
def mask(scene) -> xr.DataArray:
    data = da.from_array(_labels(), chunks=(1, 32, 32))
    coords = {"time": TIMES, "y": scene["y"].values, "x": scene["x"].values}
    return xr.DataArray(data, dims=("time", "y", "x"), coords=coords, name="cloudmask",
                        attrs=dict(ATTRS))


def _png(ax) -> np.ndarray:
    """The figure of ``ax`` rendered to PNG and read back as (H, W, 3) uint8."""
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(ax.figure)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    buffer.seek(0)
    image = plt.imread(buffer, format="png")
    return (np.asarray(image)[..., :3] * 255).round().astype(np.uint8)


def _pixels_of(image: np.ndarray, color: str) -> int:
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], np.uint8)
    return int(np.all(image == rgb, axis=-1).sum())


def test_plot_over_true_colour_is_not_blank_and_has_the_legend(mask, scene):
    ax = mask.cloudmask.plot(scene)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ATTRS["flag_meanings"].split()
    assert ax.get_title() == "ukis-6b-l1c | 2024-06-01 10:00"
    image = _png(ax)
    assert image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100  # true colour, not flat fills


def test_plot_without_rgb_draws_each_class_in_its_colour(mask):
    ax = mask.cloudmask.plot(time=np.datetime64("2024-06-11T09:00"))  # nearest: the 2nd step
    assert ax.get_title().endswith("2024-06-11 10:00")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ATTRS["flag_meanings"].split()
    image = _png(ax)
    colors = dict(zip(ATTRS["flag_meanings"].split(), ATTRS["flag_colors"].split(), strict=True))
    # half the map is clear, half shadow: each covers far more than its legend patch
    assert _pixels_of(image, colors["clear"]) > 1500
    assert _pixels_of(image, colors["cloud_shadow"]) > 1500


def test_plot_options(mask, scene):
    figure, ax = plt.subplots()
    assert mask.cloudmask.plot(scene, ax=ax, time=2, legend=False, title="") is ax
    assert ax.get_legend() is None and ax.get_title() == ""
    plt.close(figure)


def test_save_plot_writes_a_png(mask, scene, tmp_path):
    path = save_plot(tmp_path / "mask.png", mask, scene, max_size=32)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_probabilities_cannot_be_plotted(mask):
    proba = mask.astype(np.float32)
    proba.attrs = {}
    with pytest.raises(DatasetError, match="class mask"):
        proba.cloudmask.plot()
    with pytest.raises(DatasetError, match="class mask"):
        proba.cloudmask.fraction()


def test_fractions_are_lazy(mask):
    def explode(block: np.ndarray) -> np.ndarray:
        raise RuntimeError("computed")

    poisoned = mask.copy(data=mask.data.map_blocks(explode, dtype=mask.dtype))
    fractions = poisoned.cloudmask.fraction()  # builds the graph only
    assert isinstance(fractions.data, da.Array)
    assert isinstance(fractions["no_data"].data, da.Array)
    with pytest.raises(RuntimeError, match="computed"):
        fractions.compute()


def test_fractions_match_numpy_counts(mask):
    fractions = mask.cloudmask.fraction().compute()
    assert fractions.dims == ("time", "class")
    assert list(fractions["class"].values) == ["clear", "cloud", "cloud_shadow"]
    assert list(fractions["value"].values) == [0, 1, 2]
    labels = _labels()
    for step in range(2):
        valid = labels[step] != 255
        expected = [(labels[step] == value).sum() / valid.sum() for value in (0, 1, 2)]
        np.testing.assert_allclose(fractions.isel(time=step).values, expected)
        np.testing.assert_allclose(fractions["no_data"].values[step], 1 - valid.mean())
    np.testing.assert_allclose(fractions.isel(time=slice(0, 2)).sum("class"), 1.0)
    np.testing.assert_allclose(fractions.isel(time=1).values, [0.5, 0.0, 0.5])
    # a step without any valid pixel: no fractions, all of it no data
    assert np.isnan(fractions.isel(time=2).values).all()
    assert fractions["no_data"].values[2] == 1.0


def test_fractions_pooled_over_time_and_without_time(mask):
    labels = _labels()
    pooled = class_fractions(mask, by_time=False).compute()
    assert pooled.dims == ("class",)
    valid = labels != 255
    np.testing.assert_allclose(pooled.values,
                               [(labels == v).sum() / valid.sum() for v in (0, 1, 2)])
    np.testing.assert_allclose(pooled["no_data"], 1 - valid.mean())
    single = mask.isel(time=0).compute()  # in memory, no time dim
    np.testing.assert_allclose(single.cloudmask.fraction().values,
                               mask.cloudmask.fraction().isel(time=0).values)


def test_plots_without_matplotlib_name_the_extra(mask, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(OptionalDependencyError, match=r"xcloud\[plot\]"):
        mask.cloudmask.plot()
    with pytest.raises(OptionalDependencyError, match=r"xcloud\[plot\]"):
        save_plot(tmp_path / "mask.png", mask)
    assert not (tmp_path / "mask.png").exists()
    assert mask.cloudmask.fraction().sizes["class"] == 3  # fractions need no matplotlib


# -- issue 18: edges and legend -----------------------------------------------------------------

def test_quicklook_outlines_classes_and_has_a_legend_strip(mask, scene):
    """A class tinted in its colour over the same colour hides the mask's edge: each class is
    outlined in a strong colour, and a strip under the image names the classes."""
    from xcloud.outputs.quicklook import quicklook_rgba

    frame = mask.isel(time=[1])  # left half clear, right half cloud shadow (from column 32)
    plain = quicklook_rgba(frame, scene)
    with_legend = quicklook_rgba(frame, scene, legend=True)
    shadow_outline = [255, 43, 214]
    np.testing.assert_array_equal(plain[:, SIZE // 2, :3], np.tile(shadow_outline, (SIZE, 1)))
    assert not (plain[:, SIZE // 2 + 4, :3] == shadow_outline).all(axis=1).any()  # inside
    assert not (plain[:, SIZE // 2 - 1, :3] == shadow_outline).all(axis=1).any()  # clear side
    assert with_legend.shape[0] > plain.shape[0] and with_legend.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(with_legend[:plain.shape[0]], plain)
    strip = with_legend[plain.shape[0]:]
    colours = {tuple(c) for c in strip[..., :3].reshape(-1, 3)}
    assert tuple(shadow_outline) in colours and len(colours) > 8  # swatches and the text


def test_plot_axes_name_the_crs(mask, scene):
    from xcloud.outputs.plot import plot_mask

    pytest.importorskip("rioxarray")
    ax = plot_mask(mask.rio.write_crs(32633), scene)
    assert ax.get_xlabel() == "x (EPSG:32633, metre)" and ax.get_ylabel().startswith("y (EPSG")
    plt.close("all")
