"""Zarr output: round trip, laziness, resume after SIGKILL, append along time, multiscales."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import xcloud
from xcloud.errors import ZarrStoreError
from xcloud.models.registry import get
from xcloud.outputs import cf, to_zarr
from xcloud.outputs import zarr as zarr_output
from xcloud.synthetic import synthetic_scene

pytest.importorskip("rioxarray")

ROOT = Path(__file__).resolve().parents[1]
T0, T1, T2 = "2024-06-01T10:00:00.123456789", "2024-06-11T10:00:00", "2024-06-21T10:00:00"
CLASSES = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 255], np.uint8)


def synthetic_mask(*, times=(T0, T1), size=96, chunk=32, delay=0.0, calls=None, x0=500000.0,
                   model="ukis-6b-l1c") -> xr.DataArray:
    """A lazy (time, y, x) mask like predict's whose pixels depend on (time value, y, x) only.

    ``calls`` collects ``(time value, y start, x start)`` of every block computed; ``delay``
    slows each block down (seconds).
    """
    stamps = np.array(times, "datetime64[ns]")

    def fill(block, block_info=None):
        (t_start, _), (y_start, y_stop), (x_start, x_stop) = block_info[None]["array-location"]
        if calls is not None:
            calls.append((stamps[t_start], y_start, x_start))
        time.sleep(delay)
        yy, xx = np.mgrid[y_start:y_stop, x_start:x_stop].astype(np.int64)
        hours = stamps[t_start].astype("datetime64[h]").astype(np.int64)
        return CLASSES[((yy * 73856093) ^ (xx * 19349663) ^ (hours * 83492791)) % 10][None]

    data = da.zeros((len(stamps), size, size), dtype=np.uint8, chunks=(1, chunk, chunk))
    data = data.map_blocks(fill, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    coords = {"time": stamps, "y": 5800000.0 - 10.0 * (np.arange(size) + 0.5),
              "x": x0 + 10.0 * (np.arange(size) + 0.5)}
    mask = xr.DataArray(data, dims=("time", "y", "x"), coords=coords, name="cloudmask")
    mask = mask.rio.write_crs(32633)
    mask.attrs = {**cf.mask_attrs(get(model).info), "grid_mapping": "spatial_ref",
                  "source_items": [f"S2A_{t[:10]}" for t in times]}
    return mask


def chunk_keys(calls, times, chunk=32) -> set[str]:
    index = {np.datetime64(t, "ns"): i for i, t in enumerate(times)}
    return {f"{index[t]}.{y // chunk}.{x // chunk}" for t, y, x in calls}


def state_dir(store: Path) -> Path:
    return store / ".xcloud"  # the write state lives inside the store (issue 17)


def snapshot(store: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}


def load(store: Path, **kwargs) -> xr.Dataset:
    return xr.open_zarr(store, **kwargs).load()


@pytest.fixture(scope="module")
def predicted() -> xr.DataArray:
    scene = synthetic_scene(128, seed=0).chunk({"y": 64, "x": 64})
    mask = xcloud.predict(scene, model="s2cloudless").expand_dims(time=[np.datetime64(T0, "ns")])
    mask.attrs["source_items"] = ["S2B_33UUU_20240601_0_L1C"]
    return mask


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_round_trip_keeps_values_coords_crs_and_attributes(predicted, tmp_path, zarr_format):
    store = tmp_path / "mask.zarr"
    summary = to_zarr(predicted, store, zarr_format=zarr_format)
    assert (summary.chunks_written, summary.chunks_skipped, summary.times_appended) == (4, 0, 1)
    # format 2 has one fill value, which xr.open_zarr decodes as _FillValue; open_mask does not
    back = xcloud.open_mask(store)
    expected = predicted.compute()
    np.testing.assert_array_equal(back["cloud_mask"].values, expected.values)
    assert back["cloud_mask"].dtype == np.uint8
    for name in ("time", "x", "y"):
        np.testing.assert_array_equal(back[name].values, expected[name].values)
    assert back.rio.crs.to_epsg() == 32633 == back["cloud_mask"].rio.crs.to_epsg()
    assert back["cloud_mask"].rio.transform() == expected.rio.transform()
    assert back["spatial_ref"].attrs["crs_wkt"] == expected["spatial_ref"].attrs["crs_wkt"]
    attrs = {k: v for k, v in expected.attrs.items() if k != "source_items"}
    assert back["cloud_mask"].attrs == {k: v for k, v in attrs.items() if k != "grid_mapping"}
    assert back["cloud_mask"].encoding["grid_mapping"] == "spatial_ref"
    assert back.attrs["source_items"] == ["S2B_33UUU_20240601_0_L1C"]
    assert back.attrs["xcloud:complete"] is True
    assert back["cloud_mask"].encoding["chunks"] == (1, 64, 64)
    assert predicted.attrs["source_items"] == ["S2B_33UUU_20240601_0_L1C"]  # caller's untouched


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_unwritten_chunks_read_as_no_data(tmp_path, zarr_format):
    """The fill value of every stored mask is its no-data value: a chunk whose object is not
    (yet) written reads as no data, never as class 0."""
    store = tmp_path / "m.zarr"
    mask = synthetic_mask(times=(T0,))
    to_zarr(mask, store, zarr_format=zarr_format)
    array = zarr.open_array(str(store / "cloudmask"), mode="r", zarr_format=zarr_format)
    assert array.fill_value == 255 == mask.attrs["nodata"]
    chunk_file(store, "0.1.2", zarr_format).unlink()
    raw = zarr.open_array(str(store / "cloudmask"), mode="r", zarr_format=zarr_format)[:]
    assert (raw[0, 32:64, 64:96] == 255).all()
    expected = mask.values
    np.testing.assert_array_equal(raw[0, :32], expected[0, :32])
    kept = xcloud.open_mask(store)["cloudmask"]
    assert kept.dtype == np.uint8 and (kept.values[0, 32:64, 64:96] == 255).all()
    # xarray's default decoding: format 2 reads no data as NaN, format 3 keeps the classes
    decoded = xr.open_zarr(store)["cloudmask"].values
    if zarr_format == 2:
        np.testing.assert_array_equal(np.isnan(decoded), raw == 255)
    else:
        np.testing.assert_array_equal(decoded, raw)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_metadata_is_consolidated_and_write_state_removed(predicted, tmp_path, zarr_format):
    store = tmp_path / "mask.zarr"
    to_zarr(predicted, store, zarr_format=zarr_format)
    group = zarr.open_consolidated(str(store), zarr_format=zarr_format)
    assert group.metadata.consolidated_metadata is not None
    assert "cloud_mask" in group.metadata.consolidated_metadata.metadata
    assert load(store, consolidated=True)["cloud_mask"].shape == (1, 128, 128)
    assert not state_dir(store).exists()
    assert not list(store.rglob("*.partial"))


def test_accessor_writes_the_same_store(predicted, tmp_path):
    summary = predicted.cloudmask.to_zarr(tmp_path / "a.zarr")
    to_zarr(predicted, tmp_path / "b.zarr")
    assert summary.chunks_written == 4
    xr.testing.assert_identical(load(tmp_path / "a.zarr"), load(tmp_path / "b.zarr"))


def test_each_chunk_is_computed_once_and_never_all_at_once(tmp_path):
    calls = []
    mask = synthetic_mask(calls=calls)
    to_zarr(mask, tmp_path / "m.zarr", scheduler="synchronous")
    assert len(calls) == 2 * 3 * 3 == len(set(calls))  # the template computed nothing
    np.testing.assert_array_equal(load(tmp_path / "m.zarr")["cloudmask"].values,
                                  synthetic_mask().values)


def test_rerun_on_a_complete_store_changes_nothing(tmp_path):
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(), store)
    before = snapshot(store)
    calls = []
    summary = to_zarr(synthetic_mask(calls=calls), store)
    assert calls == [] and summary.chunks_written == 0 and summary.times_appended == 0
    assert snapshot(store) == before


def test_irregular_dask_chunks_are_made_uniform(tmp_path):
    mask = synthetic_mask(size=100).chunk({"y": (40, 20, 40), "x": (50, 50)})
    to_zarr(mask, tmp_path / "m.zarr")
    back = xr.open_zarr(tmp_path / "m.zarr")
    assert back["cloudmask"].encoding["chunks"] == (1, 40, 50)
    np.testing.assert_array_equal(back["cloudmask"].values, mask.values)


def test_probabilities_round_trip(tmp_path):
    scene = synthetic_scene(64, seed=2).chunk({"y": 32, "x": 32})
    proba = xcloud.predict(scene, model="s2cloudless", output="proba")
    for zarr_format in (2, 3):
        store = tmp_path / f"p{zarr_format}.zarr"
        to_zarr(proba, store, zarr_format=zarr_format)
        back = xr.open_zarr(store)["cloud_probability"]
        assert back.dtype == np.float32 and back.dims == ("class", "y", "x")
        assert back.encoding["chunks"] == (2, 32, 32)
        np.testing.assert_array_equal(back.values, proba.values)
        assert list(back["class"].values) == ["clear", "cloud"]


# -- resume ---------------------------------------------------------------------------------

WRITER = """
import sys
sys.path.insert(0, {root!r})
from tests.test_zarr import synthetic_mask
from xcloud.outputs import to_zarr
to_zarr(synthetic_mask(delay={delay}), {store!r}, zarr_format={zarr_format},
        scheduler="synchronous")
"""


def start_writer(tmp_path: Path, store: Path, zarr_format: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT), delay=0.15, store=str(store),
                                    zarr_format=zarr_format))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)


def kill_after_markers(process: subprocess.Popen, markers: Path, count: int) -> set[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if markers.is_dir() and len(os.listdir(markers)) >= count:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return set(os.listdir(markers)) if markers.is_dir() else set()


def chunk_file(store: Path, key: str, zarr_format: int) -> Path:
    return store / "cloudmask" / (key if zarr_format == 2 else "c/" + key.replace(".", "/"))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_resume_after_sigkill_finishes_only_missing_chunks(tmp_path, zarr_format):
    store = tmp_path / "killed.zarr"
    markers = state_dir(store) / "done" / "_root" / "cloudmask"
    process = start_writer(tmp_path, store, zarr_format)
    done = kill_after_markers(process, markers, count=4)
    everything = {f"{t}.{i}.{j}" for t in range(2) for i in range(3) for j in range(3)}
    assert process.returncode == -signal.SIGKILL
    assert 4 <= len(done) < len(everything)
    assert zarr.open_group(str(store), mode="r").attrs["xcloud:complete"] is False
    # a chunk without a marker that was cut short: the rerun must replace it
    torn = sorted(everything - done)[0]
    chunk_file(store, torn, zarr_format).parent.mkdir(parents=True, exist_ok=True)
    chunk_file(store, torn, zarr_format).write_bytes(b"\x00torn chunk")

    calls = []
    summary = to_zarr(synthetic_mask(calls=calls), store, scheduler="synchronous")
    recomputed = chunk_keys(calls, (T0, T1))
    assert recomputed == everything - done  # no finished chunk is computed again
    assert len(calls) == len(recomputed)  # and none twice
    assert (summary.chunks_skipped, summary.chunks_written) == (len(done), 18 - len(done))

    reference = tmp_path / "reference.zarr"
    to_zarr(synthetic_mask(), reference, zarr_format=zarr_format)
    xr.testing.assert_identical(load(store), load(reference))
    assert dict(zarr.open_group(str(store)).attrs) == dict(zarr.open_group(str(reference)).attrs)
    assert not state_dir(store).exists() and not list(store.rglob("*.partial"))


RANDOM_KILLS = 8  # writer processes killed at random points (seeded); reruns finish them


def kill_at_random(process: subprocess.Popen, store: Path, rng: random.Random) -> None:
    """SIGKILL the writer a random 0-2.4 s after it starts writing (template or chunks)."""
    deadline = time.monotonic() + 60
    begun = (store, state_dir(store))
    while time.monotonic() < deadline and process.poll() is None and not (
            any(path.exists() for path in begun)
            or any(store.parent.glob(f".{store.name}.xcloud-tmp-*"))):
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 2.4))  # 18 chunks of 0.15 s: the template or a chunk
    process.send_signal(signal.SIGKILL)
    process.wait()


def written_chunks(store: Path, zarr_format: int) -> set[str]:
    everything = {f"{t}.{i}.{j}" for t in range(2) for i in range(3) for j in range(3)}
    return {key for key in everything if chunk_file(store, key, zarr_format).is_file()}


@pytest.mark.slow
def test_repeated_random_sigkills_never_lose_or_corrupt_a_chunk(tmp_path):
    rng = random.Random(8)
    references = {}
    for zarr_format in (2, 3):
        to_zarr(synthetic_mask(), tmp_path / f"reference{zarr_format}.zarr",
                zarr_format=zarr_format)
        references[zarr_format] = load(tmp_path / f"reference{zarr_format}.zarr")
    interrupted, kills, run = 0, 0, 0
    while kills < RANDOM_KILLS:
        store, zarr_format = tmp_path / f"killed{run}.zarr", rng.choice((2, 3))
        for _ in range(min(rng.choice((1, 2)), RANDOM_KILLS - kills)):  # resumes killed too
            kill_at_random(start_writer(tmp_path, store, zarr_format), store, rng)
            kills += 1
        interrupted += _is_group_unfinished(store)
        run += 1
        summary = to_zarr(synthetic_mask(), store, zarr_format=zarr_format)
        assert summary.chunks_written + summary.chunks_skipped in (0, 18)
        assert written_chunks(store, zarr_format) == written_chunks(
            tmp_path / f"reference{zarr_format}.zarr", zarr_format)  # none missing
        xr.testing.assert_identical(load(store), references[zarr_format])  # none corrupt
        assert not state_dir(store).exists() and not list(store.rglob("*.partial"))
    assert interrupted >= 1  # the kills did land in the middle of writes


def _is_group_unfinished(store: Path) -> bool:
    if not store.exists():
        return False
    return zarr.open_group(str(store), mode="r").attrs.get("xcloud:complete") is False


def test_resuming_with_another_mask_is_refused(tmp_path):
    store = tmp_path / "killed.zarr"
    process = start_writer(tmp_path, store, 3)
    kill_after_markers(process, state_dir(store) / "done" / "_root" / "cloudmask", count=1)
    with pytest.raises(ZarrStoreError, match="unfinished write of a different mask"):
        to_zarr(synthetic_mask(times=(T0, T2)), store)
    with pytest.raises(ZarrStoreError, match="unfinished write"):
        to_zarr(synthetic_mask(model="s2cloudless"), store)


def test_interrupted_time_extension_is_rolled_back(tmp_path):
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(times=(T0,)), store)
    # what a kill in the middle of growing the arrays leaves behind: an intent, a longer array
    state_dir(store).mkdir()
    (state_dir(store) / "append-_root.json").write_text(json.dumps({"time_size": 1}))
    zarr.open_array(str(store), path="cloudmask", mode="r+").resize((3, 96, 96))
    to_zarr(synthetic_mask(times=(T1,)), store)
    reference = tmp_path / "reference.zarr"
    to_zarr(synthetic_mask(times=(T0, T1)), reference)
    xr.testing.assert_identical(load(store), load(reference))


# -- append ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_append_along_time_equals_writing_all_at_once(tmp_path, zarr_format):
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(times=(T0,)), store, zarr_format=zarr_format)
    calls = []
    summary = to_zarr(synthetic_mask(times=(T1,), calls=calls), store)
    assert summary.times_appended == 1 and len(calls) == 9
    reference = tmp_path / "reference.zarr"
    to_zarr(synthetic_mask(times=(T0, T1)), reference, zarr_format=zarr_format)
    xr.testing.assert_identical(load(store), load(reference))
    assert load(store).attrs["source_items"] == ["S2A_2024-06-01", "S2A_2024-06-11"]
    assert load(store, consolidated=True).sizes["time"] == 2


def test_times_already_stored_are_skipped(tmp_path):
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(times=(T0, T1)), store)
    calls = []
    summary = to_zarr(synthetic_mask(times=(T1, T2), calls=calls), store)
    assert {t for t, _, _ in calls} == {np.datetime64(T2, "ns")}
    assert summary.times_appended == 1
    stored = load(store)
    np.testing.assert_array_equal(stored["time"].values,
                                  np.array([T0, T1, T2], "datetime64[ns]"))
    np.testing.assert_array_equal(stored["cloudmask"].values,
                                  synthetic_mask(times=(T0, T1, T2)).values)
    assert to_zarr(synthetic_mask(times=(T2,)), store).chunks_written == 0


def test_appending_another_grid_or_model_is_refused(tmp_path):
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(times=(T0,)), store)
    with pytest.raises(ZarrStoreError, match="another grid"):
        to_zarr(synthetic_mask(times=(T1,), x0=500010.0), store)
    with pytest.raises(ZarrStoreError, match="another grid"):
        to_zarr(synthetic_mask(times=(T1,), model="s2cloudless"), store)
    with pytest.raises(ZarrStoreError, match="v3 store"):
        to_zarr(synthetic_mask(times=(T1,)), store, zarr_format=2)
    assert load(store).sizes["time"] == 1


def test_store_errors(tmp_path):
    with pytest.raises(ZarrStoreError, match="local path"):  # object stores: test_object_store
        to_zarr(synthetic_mask(), tmp_path / "m.zarr", storage_options={"anon": True})
    with pytest.raises(ZarrStoreError, match="unknown storage protocol"):
        to_zarr(synthetic_mask(), "no-such-protocol://bucket/mask.zarr")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ZarrStoreError, match="refusing to delete"):
        to_zarr(synthetic_mask(), folder, overwrite=True)
    with pytest.raises(ZarrStoreError, match="not an empty folder"):
        to_zarr(synthetic_mask(), folder)
    assert (folder / "keep.txt").read_text() == "mine"
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(tmp_path / "other.zarr", consolidated=False)
    with pytest.raises(ZarrStoreError, match="did not write"):
        to_zarr(synthetic_mask(), tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="factors"):
        to_zarr(synthetic_mask(), tmp_path / "m.zarr", multiscales=(1,))


# -- multiscales ----------------------------------------------------------------------------


def majority_reference(labels: np.ndarray, factor: int, nodata: int = 255) -> np.ndarray:
    """Plain numpy mode of each factor x factor block (ties: smallest; nodata ignored)."""
    height, width = labels.shape[-2:]
    out = np.full((*labels.shape[:-2], math.ceil(height / factor), math.ceil(width / factor)),
                  nodata, np.uint8)
    for index in np.ndindex(*out.shape):
        *lead, j, i = index
        block = labels[(*lead, slice(j * factor, (j + 1) * factor),
                        slice(i * factor, (i + 1) * factor))].ravel()
        valid = block[block != nodata]
        if valid.size:
            out[index] = np.bincount(valid).argmax()
    return out


def test_multiscale_levels_are_majority_votes_of_level_0(tmp_path):
    store = tmp_path / "m.zarr"
    mask = synthetic_mask(times=(T0,), size=100)
    summary = to_zarr(mask, store, multiscales=(2, 6))
    assert summary.levels == ("r20m", "r60m")
    labels = mask.values
    for name, factor in (("r20m", 2), ("r60m", 6)):
        level = xr.open_zarr(store, group=name, decode_coords="all")
        np.testing.assert_array_equal(level["cloudmask"].values,
                                      majority_reference(labels, factor))
        size = math.ceil(100 / factor)
        step = 10.0 * factor
        np.testing.assert_allclose(level["x"].values, 500000.0 + step * (np.arange(size) + 0.5))
        np.testing.assert_allclose(level["y"].values, 5800000.0 - step * (np.arange(size) + 0.5))
        assert level.rio.crs.to_epsg() == 32633
        geo = [float(v) for v in level["spatial_ref"].attrs["GeoTransform"].split()]
        assert geo == [500000.0, step, 0.0, 5800000.0, 0.0, -step]
        assert level["cloudmask"].attrs["flag_values"] == mask.attrs["flag_values"]
    layout = zarr.open_group(str(store)).attrs["multiscales"]["layout"]
    assert [entry["asset"] for entry in layout] == [".", "r20m", "r60m"]
    assert layout[2]["transform"]["scale"] == [6.0, 6.0]
    assert layout[2]["proj:shape"] == [17, 17]
    assert layout[2]["proj:transform"] == [60.0, 0.0, 500000.0, 0.0, -60.0, 5800000.0]
    assert zarr.open_group(str(store)).attrs["multiscales"]["resampling_method"] == "mode"


def test_levels_follow_appends_and_are_read_from_the_store(tmp_path):
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(times=(T0,)), store, multiscales=(3,))
    calls = []
    summary = to_zarr(synthetic_mask(times=(T1,), calls=calls), store)  # levels kept up to date
    assert summary.levels == ("r30m",) and len(calls) == 9  # the levels never recompute masks
    level = xr.open_zarr(store, group="r30m")
    assert level.sizes["time"] == 2
    np.testing.assert_array_equal(level["cloudmask"].values,
                                  majority_reference(synthetic_mask(times=(T0, T1)).values, 3))


def crash_after(count: int, monkeypatch) -> None:
    """Make the chunk writer fail once ``count`` chunks are written (a crash mid-way)."""
    original = zarr_output._write_chunk
    written = []

    def write_chunk(block, target):
        if len(written) == count:
            raise RuntimeError("power cut")
        written.append(target.region)
        return original(block, target)

    monkeypatch.setattr(zarr_output, "_write_chunk", write_chunk)


def test_unfinished_write_is_finished_before_new_times_are_appended(tmp_path, monkeypatch):
    store = tmp_path / "m.zarr"
    crash_after(5, monkeypatch)
    with pytest.raises(RuntimeError, match="power cut"):
        to_zarr(synthetic_mask(times=(T0, T1)), store, scheduler="synchronous")
    monkeypatch.undo()
    calls = []
    summary = to_zarr(synthetic_mask(times=(T0, T1, T2), calls=calls), store)
    assert (summary.chunks_skipped, summary.chunks_written) == (5, 18 - 5 + 9)
    assert len(calls) == len(set(calls)) == 22
    reference = tmp_path / "reference.zarr"
    to_zarr(synthetic_mask(times=(T0, T1, T2)), reference)
    xr.testing.assert_identical(load(store), load(reference))


def test_interrupted_level_write_is_resumed(tmp_path, monkeypatch):
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(times=(T0,)), store)
    crash_after(3, monkeypatch)
    with pytest.raises(RuntimeError, match="power cut"):
        to_zarr(synthetic_mask(times=(T0,)), store, multiscales=(2,), scheduler="synchronous")
    monkeypatch.undo()
    assert zarr.open_group(str(store)).attrs["xcloud:complete"] is False
    assert "xcloud:pending" in zarr.open_group(str(store), path="r20m").attrs

    # a new scene arrives before the level was finished: level T0 is resumed, then T1 added
    summary = to_zarr(synthetic_mask(times=(T1,)), store)
    assert summary.chunks_skipped == 3
    assert summary.chunks_written == 9 + (9 - 3) + 9  # level 0 at T1, level at T0 and T1
    reference = tmp_path / "reference.zarr"
    to_zarr(synthetic_mask(times=(T0, T1)), reference, multiscales=(2,))
    xr.testing.assert_identical(load(store, group="r20m"), load(reference, group="r20m"))
    attrs = dict(zarr.open_group(str(store)).attrs)
    assert attrs == dict(zarr.open_group(str(reference)).attrs)


def test_the_stored_mask_is_not_hidden_by_the_accessor(tmp_path):
    """xr.open_zarr(store).cloudmask is the accessor: the variable is named cloud_mask."""
    from xcloud.synthetic import synthetic_scene

    mask = synthetic_scene(64, seed=2).cloudmask.predict(model="s2cloudless")
    assert mask.name == "cloud_mask"
    to_zarr(mask, tmp_path / "m.zarr")
    stored = xr.open_zarr(tmp_path / "m.zarr")
    assert stored.cloud_mask.attrs["flag_meanings"] == mask.attrs["flag_meanings"]
    np.testing.assert_array_equal(stored.cloud_mask.values.reshape(mask.shape), mask.values)


def test_a_store_of_the_old_name_takes_appends_under_its_name(tmp_path):
    """Stores written before the rename hold 'cloudmask': new masks append to it."""
    store = tmp_path / "m.zarr"
    to_zarr(synthetic_mask(times=(T0,)), store)  # named 'cloudmask', as before
    summary = to_zarr(synthetic_mask(times=(T1,)).rename("cloud_mask"), store)
    assert summary.times_appended == 1
    reference = tmp_path / "reference.zarr"
    to_zarr(synthetic_mask(times=(T0, T1)), reference)
    xr.testing.assert_identical(load(store), load(reference))
    assert list(load(store).data_vars) == ["cloudmask"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_marker_without_its_chunk_object_is_not_trusted(tmp_path, zarr_format):
    """Resuming checks that each marked chunk's object exists: a chunk object lost after its
    marker is computed again, never read as the fill value; and every chunk is stored, even
    one that is all no data, so that a missing object always means a lost chunk."""
    empty_mask = synthetic_mask(times=(T0,))
    empty_mask = empty_mask.copy(data=empty_mask.data * 0 + 255)
    to_zarr(empty_mask, tmp_path / "empty.zarr", zarr_format=zarr_format)
    assert all(chunk_file(tmp_path / "empty.zarr", f"0.{i}.{j}", zarr_format).is_file()
               for i in range(3) for j in range(3))

    store = tmp_path / "killed.zarr"
    process = start_writer(tmp_path, store, zarr_format)
    done = kill_after_markers(process, state_dir(store) / "done" / "_root" / "cloudmask",
                              count=4)
    everything = {f"{t}.{i}.{j}" for t in range(2) for i in range(3) for j in range(3)}
    lost = sorted(done)[0]
    chunk_file(store, lost, zarr_format).unlink()  # its marker stays
    calls = []
    to_zarr(synthetic_mask(calls=calls), store, scheduler="synchronous")
    assert chunk_keys(calls, (T0, T1)) == (everything - done) | {lost}
    reference = tmp_path / "reference.zarr"
    to_zarr(synthetic_mask(), reference, zarr_format=zarr_format)
    xr.testing.assert_identical(load(store), load(reference))
