"""Reading at the model's resolution: a tile end to end, before and after, JPEG 2000 and COG.

The real L1C scene (T33UUU, 768 x 1536 px at 10 m) is mirrored to a ``--size`` square tile and
written, band by band at its native resolution (10, 20, 60 m), in two encodings:

- **JPEG 2000 as the Sentinel-2 L1C products are** (as ``gdalinfo`` shows a product's band
  file: 1024² px tiles, 5 resolution levels, i.e. 4 overviews): GDAL's ``JP2OpenJPEG`` with
  ``RESOLUTIONS=5``, ``BLOCKXSIZE=BLOCKYSIZE=1024``, 64² px code-blocks, lossless (reversible
  5/3 wavelet, ``QUALITY=100``; lossless as ESA describes its products' compression);
- **COG as Earth Search serves Level-2A**: GDAL's ``COG`` driver, 1024² px blocks, DEFLATE
  with predictor 2, ``AVERAGE`` overviews (5 levels).

Then, each run in a fresh process (after an untimed 512² run that loads the model and the
compiled kernels), Dask's threaded scheduler on all cores:

1. **ukis-6b-l1c from JPEG 2000**: ``predict`` at the data's resolution (before: every band
   decoded at 10 m, averaged to 30 m inside the chunks) and at the model's
   (after: :func:`xcloud.engine.model_grid.predict_at_model_resolution`, bands read from the
   coarsest serving level). Wall time, CPU seconds and where they go: reading + decoding (the
   readers' thread CPU time), the network (the model's ``predict_proba``), the rest; the
   after/before ratio (target <= 0.5), the network's share (target >= 75 %) and the masks'
   agreement with the full-resolution path.
2. **s2cloudless**: at 10 m (today's path) and at 160 m (its documented resolution) from the
   levels and from a full-resolution read (target <= 0.2x of the 10 m path); agreement of the
   160 m mask with both.
3. **From COGs** (the L2A layout): the same two tables.
4. **Scaling** of the after path (ukis, JPEG 2000): ``xcloud.local_cluster`` with 2 worker
   processes vs 1 (target >= 1.8x), one worker with 2 threads vs 1 (target >= 1.9x); and
   **decoding threads**: the full-resolution read alone under the synchronous scheduler (one
   task at a time: GDAL decodes with every core) against ``GDAL_NUM_THREADS=1`` and the
   threaded scheduler.

No GPU is used: every figure is on the CPU (the header's ``device`` line names it).

The CPU split: the network's CPU seconds are summed around ``predict_proba`` (in the task's
thread); reading + decoding is the CPU of a second, read-only run of what the path reads (GDAL
decodes JPEG 2000 in threads of its own, which a clock around the reads would miss); the rest
is what remains. ``--quick`` leaves out the rows that read the model's grid at full
resolution (what the levels change) to stay under 3 minutes.

    python benchmarks/bench_read_levels.py                  # 10980² tile, 2048 px chunks
    python benchmarks/bench_read_levels.py --quick          # 2048² tile, 1024 px chunks
    python benchmarks/bench_read_levels.py --workdir /data/tiles   # keep the encoded tiles
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common
import numpy as np

FULL_SIZE, QUICK_SIZE = 10980, 2048
FULL_CHUNK, QUICK_CHUNK = 2048, 1024
WARM_UP = 512
UKIS, S2CLOUDLESS = "ukis-6b-l1c", "s2cloudless"
S2CLOUDLESS_RESOLUTION = 160.0
BANDS = ("B01", "B02", "B03", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")
ENCODINGS: dict[str, dict[str, Any]] = {
    "jp2": {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES", "RESOLUTIONS": 5,
            "BLOCKXSIZE": 1024, "BLOCKYSIZE": 1024, "CODEBLOCK_WIDTH": 64,
            "CODEBLOCK_HEIGHT": 64},
    "cog": {"driver": "COG", "BLOCKSIZE": 1024, "COMPRESS": "DEFLATE", "PREDICTOR": 2,
            "RESAMPLING": "AVERAGE", "OVERVIEW_COUNT": 5},
}
SUFFIX = {"jp2": ".jp2", "cog": ".tif"}


# -- the tile ---------------------------------------------------------------------------------


def encoded_scene(size: int, encoding: str, folder: Path) -> Path:
    """The real scene's bands mirrored to a ``size``² px tile at 10 m, each at its native
    resolution (:func:`_common.scene_files`), copied into ``folder`` in ``encoding`` (see the
    module's notes); files already there are kept."""
    import rasterio.shutil

    tiffs = _common.scene_files(size, BANDS, folder / "tif")
    for tiff in sorted(tiffs.glob("*.tif")):
        target = folder / f"{tiff.stem}{SUFFIX[encoding]}"
        if target.exists():
            continue
        partial = folder / "partial" / target.name  # moved in once complete
        partial.parent.mkdir(parents=True, exist_ok=True)
        rasterio.shutil.copy(tiff, partial, **ENCODINGS[encoding])
        for written in sorted(partial.parent.glob(f"{partial.name}*"), reverse=True):
            written.rename(folder / written.name)  # GDAL's .aux.xml first, the file last
    return folder


def _scene(folder: str, model: str, chunk: int) -> Any:
    import xcloud
    from xcloud.data.load import load
    from xcloud.data.sample import scene_item

    bands = list(xcloud.models.get(model).info.bands)
    return load([scene_item(folder)], bands=bands, chunks=chunk)


def _mask(data: Any, model: str, read: str) -> Any:
    """The lazy mask: ``read`` is ``data`` (full resolution), ``model`` (the model's grid from
    the levels), ``<metres>`` (that grid from the levels) or ``<metres>-full``."""
    import xcloud
    from xcloud.engine.model_grid import predict_at_model_resolution

    if read == "data":  # predict's default may be the model's grid: ask for the data's
        return xcloud.predict(data, model=model, read_resolution="data")
    resolution, _, full = read.partition("-")
    target: str | float = resolution if resolution == "model" else float(resolution)
    return predict_at_model_resolution(data, model=model, read_resolution=target,
                                       read_levels=not full)


# -- measuring in a child process -------------------------------------------------------------


def _reads(data: Any, model: str, read: str) -> Any:
    """What the path reads, alone: the loaded bands, or the bands on the model's grid."""
    import xcloud
    from xcloud.data.levels import read_coarser

    if read == "data":
        return data
    resolution, _, full = read.partition("-")
    target = xcloud.models.get(model).info.resolution if resolution == "model" \
        else float(resolution)
    factor = round(target / abs(float(data.x[1] - data.x[0])))
    return read_coarser(data, factor, levels=not full)


class ThreadClock:
    """CPU seconds spent inside wrapped calls, summed over the threads that made them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - start  # float += is atomic enough here
        return timed


@contextmanager
def network_clock(model: str) -> Iterator[ThreadClock]:
    """A clock on the model's ``predict_proba`` (the model cached for the tasks, wrapped in
    place; it runs in the task's thread: one onnxruntime, torch or numba thread per task)."""
    from xcloud.engine.cache import ModelSpec, get_model

    network = ThreadClock()
    cached = get_model(ModelSpec.create(model, weights=None, device="cpu", runtime="auto"))
    cached.predict_proba = network.wrap(type(cached).predict_proba.__get__(cached))
    try:
        yield network
    finally:
        del cached.predict_proba


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_mask(folder: str, model: str, read: str, chunk: int, out: str) -> dict[str, Any]:
    """One timed mask (threaded scheduler), saved to ``out``: wall, CPU, the network's CPU
    and, from a second, read-only run of what the path reads, the reading's CPU (GDAL
    decodes JPEG 2000 in threads of its own: a clock around the reads would not see it)."""
    import dask

    data = _scene(folder, model, chunk)
    with dask.config.set(scheduler="threads"):
        _mask(data.isel(y=slice(0, WARM_UP), x=slice(0, WARM_UP)), model, read).compute()
        with network_clock(model) as network, _common.stopwatch() as meter:
            cpu = _process_cpu()
            values = _mask(data, model, read).values
            cpu = _process_cpu() - cpu
        reading = _process_cpu()
        bands = _reads(data, model, read)  # summed, not kept: a full tile's bands are GiBs
        dask.compute([bands[name].data.sum() for name in bands.data_vars])
        reading = _process_cpu() - reading
    np.save(out, values)
    return {**meter.as_dict(), "cpu": cpu, "read": reading, "network": network.seconds}


def run_scaling(folder: str, model: str, read: str, chunk: int, workers: int,
                threads: int) -> dict[str, Any]:
    """The mask on a ``local_cluster`` of ``workers`` processes x ``threads`` threads, with
    Dask's task stream: tasks run, their summed compute seconds and the share of the worker
    threads' time they kept busy."""
    from distributed import Client, get_task_stream

    import xcloud

    data = _scene(folder, model, chunk)
    with xcloud.local_cluster(n_workers=workers, threads_per_worker=threads) as cluster, \
            Client(cluster) as client:
        warm = _mask(data.isel(y=slice(0, WARM_UP), x=slice(0, WARM_UP)), model, read)
        for address in client.scheduler_info()["workers"]:  # the model in every process
            client.compute(warm, workers=[address]).result()
        with get_task_stream(client) as stream, _common.stopwatch() as meter:
            _mask(data, model, read).compute()
    result = meter.as_dict()
    computing = [stop - start for record in stream.data for start, stop in
                 ((s["start"], s["stop"]) for s in record["startstops"]
                  if s["action"] == "compute")]
    busy = sum(computing) / (result["seconds"] * workers * threads)
    return {**result, "tasks": len(stream.data), "compute": sum(computing), "busy": busy}


def run_decode(folder: str, chunk: int, setup: str) -> dict[str, Any]:
    """The full-resolution read alone (ukis' bands): ``sync`` (GDAL decodes with every core),
    ``sync-1`` (``GDAL_NUM_THREADS=1``) or ``threads`` (the threaded scheduler)."""
    import dask

    import xcloud
    from xcloud.data.load import load
    from xcloud.data.sample import scene_item

    gdal = {"GDAL_NUM_THREADS": 1} if setup == "sync-1" else None
    bands = list(xcloud.models.get(UKIS).info.bands)
    data = load([scene_item(folder)], bands=bands, chunks=chunk, gdal=gdal)
    with dask.config.set(scheduler=setup.partition("-")[0]):
        data.isel(y=slice(0, WARM_UP), x=slice(0, WARM_UP)).compute()
        with _common.stopwatch() as meter:
            cpu = _process_cpu()
            data.compute()
            cpu = _process_cpu() - cpu
    return {**meter.as_dict(), "cpu": cpu}


def run_decode_levels(folder: str) -> dict[str, Any]:
    """CPU seconds to decode each of ukis' band files whole, at full resolution and at each
    GDAL overview (JPEG 2000 resolution level), one GDAL thread; and which level
    :func:`xcloud.data.levels.choose_levels` serves the model's grid from."""
    import rasterio

    import xcloud
    from xcloud.data.levels import choose_levels
    from xcloud.data.load import recipe_of

    info = xcloud.models.get(UKIS).info
    data = _scene(folder, UKIS, FULL_CHUNK)
    factor = round(info.resolution / abs(float(data.x[1] - data.x[0])))
    chosen = choose_levels(recipe_of(data, list(info.bands)), factor, list(info.bands))
    rows: dict[str, Any] = {}
    with rasterio.Env(GDAL_NUM_THREADS=1):
        for band in info.bands:
            path = next(Path(folder).glob(f"*_{band}.jp2"))
            seconds = []
            for level in (None, 0, 1):
                options = {} if level is None else {"overview_level": level}
                with rasterio.open(path, **options) as source:
                    start = time.process_time()
                    source.read(1)
                    seconds.append(time.process_time() - start)
            rows[band] = {"seconds": seconds, "chosen": chosen[band].index}
    return {"bands": rows}


def decode_table(folder: Path, network: float | None) -> None:
    """Table 1b: what decoding costs at each level, and the floor it puts under the path."""
    result = _common.run_child(Path(__file__), "run_decode_levels", folder=str(folder))
    levels = ["full", "overview 0", "overview 1"]
    rows, floor = [], 0.0
    for band, row in result["bands"].items():
        chosen = 0 if row["chosen"] is None else row["chosen"] + 1
        floor += row["seconds"][chosen]
        rows.append([band, *(f"{s:.2f}" for s in row["seconds"]), levels[chosen]])
    rows.append(["sum at the serving levels", "", "", "", f"{floor:.1f} CPU s"])
    title = ("Decoding ukis' bands (JPEG 2000, whole files, one GDAL thread): CPU s per "
             "level; the serving level is what the model's grid is read from")
    if network is not None:
        title += (f"; with the network's {network:.1f} CPU s, its share is at most "
                  f"{100 * network / (network + floor):.0f} % of the CPU")
    _common.print_table(["band", "full", "overview 0", "overview 1", "serving level"], rows,
                        title=title)


# -- the tables -------------------------------------------------------------------------------


def _agreement(a: Path, b: Path) -> float:
    return float(np.mean(np.load(a) == np.load(b)))


def _split_row(label: str, result: dict[str, Any], before: dict[str, Any] | None,
               agreement: str) -> list[str]:
    cpu = max(result["cpu"], 1e-9)
    rest = max(0.0, cpu - result["read"] - result["network"])
    ratio = "1.00" if before is None else f"{result['seconds'] / before['seconds']:.2f}"
    return [label, f"{result['seconds']:.1f}", f"{cpu:.1f}",
            f"{result['read']:.1f} ({100 * result['read'] / cpu:.0f} %)",
            f"{result['network']:.1f} ({100 * result['network'] / cpu:.0f} %)",
            f"{rest:.1f} ({100 * rest / cpu:.0f} %)", ratio, agreement,
            _common.Meter.from_dict(result).noise]


SPLIT_HEADERS = ["path", "wall s", "CPU s", "read + decode CPU s (read-only run)", "network CPU s",
                 "rest CPU s", "wall vs before", "agreement", _common.NOISE_HEADER]


def masks_table(args: argparse.Namespace, encoding: str, folder: Path,
                tmp: Path) -> float:
    """Tables 1-3 for one encoding: ukis before/after, s2cloudless at 10 m and 160 m; returns
    the network's CPU seconds on the after path."""
    script = Path(__file__)
    runs = {}
    resolution = f"{S2CLOUDLESS_RESOLUTION:g}"
    plan = [(UKIS, "data"), (UKIS, "model")]
    if not args.skip_s2cloudless:
        plan += [(S2CLOUDLESS, "data"), (S2CLOUDLESS, resolution)]
    if not (args.quick or args.skip_full_reads):  # the model's grid read at full resolution
        plan += [(UKIS, "model-full")]
        plan += [] if args.skip_s2cloudless else [(S2CLOUDLESS, f"{resolution}-full")]
    for model, read in plan:
        _common.progress(f"{encoding}: {model}, read at {read}")
        out = tmp / f"{encoding}-{model}-{read}.npy"
        runs[model, read] = (_common.run_child(script, "run_mask", folder=str(folder),
                                               model=model, read=read, chunk=args.chunk,
                                               out=str(out)), out)
    name = {"jp2": "JPEG 2000 (L1C layout)", "cog": "COG (L2A layout)"}[encoding]
    before, before_out = runs[UKIS, "data"]
    rows = [_split_row("before: 10 m read, data's grid", before, None, "-")]
    for read, label in (("model", "after: 30 m from the levels"),
                        ("model-full", "after, full-resolution read")):
        if (UKIS, read) not in runs:
            continue
        result, out = runs[UKIS, read]
        rows.append(_split_row(label, result, before,
                               f"{100 * _agreement(out, before_out):.2f} %"))
    _common.print_table(SPLIT_HEADERS, rows, title=f"ukis-6b-l1c, {args.size}² tile, {name}: "
                        "target after <= 0.5x before, network >= 75 % of CPU")
    network = float(runs[UKIS, "model"][0]["network"])
    if args.skip_s2cloudless:
        return network
    before, before_out = runs[S2CLOUDLESS, "data"]
    full = runs.get((S2CLOUDLESS, f"{resolution}-full"))
    rows = [_split_row("before: 10 m (registry resolution)", before, None, "-")]
    for read, label in ((resolution, f"after: {resolution} m from the levels"),
                        (f"{resolution}-full", f"{resolution} m, full-resolution read")):
        if (S2CLOUDLESS, read) not in runs:
            continue
        result, out = runs[S2CLOUDLESS, read]
        agreement = f"{100 * _agreement(out, before_out):.2f} % vs 10 m" + (
            "" if full is None else f", {100 * _agreement(out, full[1]):.2f} % vs "
            f"{resolution} m full")
        rows.append(_split_row(label, result, before, agreement))
    _common.print_table(SPLIT_HEADERS, rows, title=f"s2cloudless, {args.size}² tile, {name}: "
                        "target after <= 0.2x before")
    return network


def scaling_table(args: argparse.Namespace, folder: Path) -> None:
    """Table 4: the after path on 1 vs 2 worker processes, 1 vs 2 threads; decoding threads."""
    script = Path(__file__)
    setups = [("1 process x 1 thread", 1, 1), ("2 processes x 1 thread", 2, 1),
              ("1 process x 2 threads", 1, 2)]
    results = {}
    for label, workers, threads in setups:
        _common.progress(f"scaling: {label}")
        results[label] = _common.run_child(script, "run_scaling", folder=str(folder),
                                           model=UKIS, read="model", chunk=args.chunk,
                                           workers=workers, threads=threads)
    base = results[setups[0][0]]["seconds"]
    targets = {setups[1][0]: ">= 1.8x", setups[2][0]: ">= 1.9x"}
    rows = [[label, f"{r['seconds']:.1f}", f"{base / r['seconds']:.2f}x",
             targets.get(label, "-"), str(r["tasks"]), f"{r['compute']:.1f}",
             f"{100 * r['busy']:.0f} %", _common.Meter.from_dict(r).noise]
            for label, r in results.items()]
    _common.print_table(["local_cluster", "wall s", "speed-up", "target", "tasks",
                         "task compute s", "threads busy", _common.NOISE_HEADER],
                        rows, title=f"Scaling, ukis-6b-l1c at 30 m from the JPEG 2000 levels, "
                        f"{args.size}² tile")
    rows = []
    for setup, label in (("sync", "synchronous, GDAL threads = cores (default)"),
                         ("sync-1", "synchronous, GDAL_NUM_THREADS=1"),
                         ("threads", "threaded (a task per core, 1 GDAL thread each)")):
        _common.progress(f"decoding: {setup}")
        r = _common.run_child(script, "run_decode", folder=str(folder), chunk=args.chunk,
                              setup=setup)
        rows.append([label, f"{r['seconds']:.2f}", f"{r['cpu']:.2f}",
                     _common.Meter.from_dict(r).noise])
    _common.print_table(["scheduler", "wall s", "CPU s", _common.NOISE_HEADER], rows,
                        title=f"Decoding threads: full-resolution read of ukis' 6 bands, "
                        f"JPEG 2000, {args.size}²")


CHILD_CALLS = {"run_mask": run_mask, "run_scaling": run_scaling, "run_decode": run_decode,
               "run_decode_levels": run_decode_levels}
"""What a child process started by :func:`_common.run_child` may be asked to run."""


def main() -> None:
    if _common.serve_child(CHILD_CALLS):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser)
    parser.add_argument("--size", type=int, default=None, help=f"tile size (default "
                        f"{FULL_SIZE}, {QUICK_SIZE} with --quick)")
    parser.add_argument("--chunk", type=int, default=None, help=f"chunk in px (default "
                        f"{FULL_CHUNK}, {QUICK_CHUNK} with --quick)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the encoded tiles are written and kept between runs "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--skip-scaling", action="store_true", help="tables 1-3 only")
    parser.add_argument("--skip-s2cloudless", action="store_true",
                        help="leave out s2cloudless' rows")
    parser.add_argument("--skip-full-reads", action="store_true",
                        help="leave out the model's grid read at full resolution")
    args = parser.parse_args()
    _common.use_data(args.data)
    args.size = args.size or (QUICK_SIZE if args.quick else FULL_SIZE)
    args.chunk = args.chunk or (QUICK_CHUNK if args.quick else FULL_CHUNK)
    _common.print_header("Reading at the model's resolution (bench_read_levels.py)",
                         size=f"{args.size}²", chunk=args.chunk, cores=os.cpu_count())
    print("No GPU is used: every figure below is measured on the CPU.")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        tiles = {}
        for encoding in ENCODINGS:
            _common.progress(f"encoding the {args.size}² tile as {encoding}")
            tiles[encoding] = encoded_scene(args.size, encoding,
                                            work / f"{encoding}-{args.size}")
        for encoding, folder in tiles.items():
            network = masks_table(args, encoding, folder, Path(scratch))
            if encoding == "jp2":
                decode_table(folder, network)
        if not args.skip_scaling:
            scaling_table(args, tiles["jp2"])


if __name__ == "__main__":
    main()
