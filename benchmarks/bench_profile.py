"""Where the time goes in one full-tile run, how close the model is to the hardware, and the GPU.

1. **Stages.** One chunk task of ``predict(model="ukis-6b-l1c")`` + ``to_zarr`` on a ``--size``
   scene in ``--chunk`` px chunks is run by calling the engine's own functions on real data,
   with ``perf_counter`` around each stage (the engine's module functions are wrapped for the
   run, not changed): reading and decoding the bands (``xcloud.load`` on their native grids),
   resampling 20 m bands to 10 m (the numba kernel ``load`` uses), checking for no data,
   normalising, averaging to the model's 30 m grid, the model's ``predict_proba`` on the
   tiles, cutting and blending the tiles, back to 10 m and classified (in one pass for
   argmax models: ``upsampled_output``; ``finish_block`` at the model's own grid), and
   writing the chunk into a Zarr store (``to_zarr``'s chunk writer). Stages
   are scaled to the whole scene: per-pixel stages by its pixels (each pixel is checked,
   normalised and averaged once: chunks share model-grid sums, not halos), the model and the
   blending by the tiles the chunks run (counted with the engine's tiling), reading and
   resampling by the source chunks (each read once).
   One thread per task, as in the engine on the threaded scheduler; the wall estimate divides
   the CPU seconds by the cores.
2. **Model vs hardware.** The model's FLOPs for one 256² tile (``FlopCounterMode`` on the
   torch port) against this CPU's measured float32 matmul rate, and the time per tile of
   the torch port and of the onnxruntime graph (the CPU default), with one thread and all.
3. **End to end.** ``predict`` + ``to_zarr`` on the real scene mirrored to ``--size``, timed,
   beside the stage estimate (the mirrored scene reads the same 1.2 Mpx of JP2 over and over,
   so it reads less than a real tile would).
4. **GPU** (when torch sees CUDA): the torch port in float32, float16 and bfloat16 over batch
   sizes 1 to 32, with and without ``torch.compile``, against the GPU's measured matmul rate;
   then the full tile end to end on the GPU, decoded by the CPU (target: < 30 s on an
   H100-class GPU). Without CUDA the section says it was skipped.

    python benchmarks/bench_profile.py                  # 10980² in 2048 px chunks
    python benchmarks/bench_profile.py --quick          # 2048² in 1024 px chunks
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common
import numpy as np

MODEL = "ukis-6b-l1c"
TILE = 256
GPU_TARGET_S = 30.0
GPU_BATCHES = [1, 2, 4, 8, 16, 32]
QUICK_GPU_BATCHES = [1, 8, 32]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def best_of(function: Callable[[], Any], repeats: int) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


@contextmanager
def engine_threads(threads: int) -> Iterator[None]:
    """Dask config under which xcloud gives each model call ``threads`` threads."""
    import dask

    if threads >= _cores():
        with dask.config.set(scheduler="sync"):
            yield
    else:
        with dask.config.set(scheduler="threads", num_workers=_cores() // threads):
            yield


# -- 1. stages --------------------------------------------------------------------------------


class StageTimer:
    """Seconds per stage, accumulated by wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.tiles = 0

    def wrap(self, stage: str | Callable[..., str], function: Callable[..., Any]) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = stage(*args, **kwargs) if callable(stage) else stage
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed


class _TimedModel:
    """A loaded model whose ``predict_proba`` is timed (tiles counted); the rest passes."""

    def __init__(self, model: Any, timer: StageTimer) -> None:
        self._model, self._timer = model, timer
        self.predict_proba = timer.wrap("model", self._count(model.predict_proba))

    def _count(self, function: Callable) -> Callable:
        def counted(batch: np.ndarray) -> np.ndarray:
            self._timer.tiles += len(batch)
            return function(batch)
        return counted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@contextmanager
def instrumented(timer: StageTimer) -> Iterator[None]:
    """Wrap the functions a chunk's tasks call (the engine modules' own names) for one run."""
    from xcloud.models.protocol import Normalization

    blocks = importlib.import_module("xcloud.engine.blocks")
    shared = importlib.import_module("xcloud.engine.tile_once")
    resample = importlib.import_module("xcloud.data.resample")
    stages = [(blocks, "_nodata_mask", "no-data check"), (resample, "block_sums", "to model grid"),
              (shared, "_assembled", "to model grid"), (shared, "sum_tiles", "tiles"),
              (shared, "blended", "sum + blend"),
              (shared, "upsampled_output", "back to 10 m + classify"),
              (shared, "finish_block", "classify")]
    saved = [(module, name, getattr(module, name)) for module, name, _ in stages]
    get_model, apply = blocks.get_model, Normalization.apply
    for module, name, stage in stages:
        setattr(module, name, timer.wrap(stage, getattr(module, name)))
    blocks.get_model = lambda spec: _TimedModel(get_model(spec), timer)
    Normalization.apply = timer.wrap("normalise", apply)
    try:
        yield
    finally:
        for module, name, function in saved:
            setattr(module, name, function)
        blocks.get_model, Normalization.apply = get_model, apply


def _native_groups(bands: tuple[str, ...]) -> dict[int, list[str]]:
    """The bands by native resolution (m)."""
    from xcloud.data.bands import SENTINEL2_BANDS, canonical_band_name

    groups: dict[int, list[str]] = defaultdict(list)
    for band in bands:
        groups[int(SENTINEL2_BANDS[canonical_band_name(band)].resolution)].append(band)
    return dict(groups)


def measure_read(bands: tuple[str, ...],
                 repeats: int) -> tuple[float, int, dict[int, np.ndarray]]:
    """Read and decode the real scene's bands on their native grids (DN to reflectance
    included, no resampling), one thread: best seconds, 10 m pixels, arrays by resolution."""
    import dask

    from xcloud.data.load import load
    from xcloud.data.sample import sample_scene_dir, scene_item

    items = [scene_item(sample_scene_dir(download=False))]
    groups = _native_groups(bands)

    def read() -> dict[int, np.ndarray]:
        return {resolution: load(items, bands=names, resolution=resolution, chunks=8192)
                .to_array("band").values[:, 0]
                for resolution, names in groups.items()}

    with dask.config.set(scheduler="sync"):
        arrays = read()  # imports, file handles
        seconds = best_of(read, repeats)
    pixels = int(np.prod(arrays[min(arrays)].shape[-2:])) * (min(arrays) // 10) ** 2
    return seconds, pixels, arrays


def measure_upsample(arrays: dict[int, np.ndarray], chunk: int, repeats: int) -> float:
    """Seconds to bring one chunk's coarser bands to 10 m with load's numba bilinear kernel."""
    from xcloud.data.resample import upsample_bilinear

    pieces = [(_common.mirror_numpy(array, -(-chunk // (resolution // 10))), resolution // 10)
              for resolution, array in arrays.items() if resolution > 10]
    if not pieces:
        return 0.0

    def upsample() -> None:
        for piece, factor in pieces:
            upsample_bilinear(piece, factor)

    upsample()  # numba compiles or loads its cache
    return best_of(upsample, repeats)


def padded_scene(task: Any, row: int, col: int, bands: tuple[str, ...]) -> np.ndarray:
    """(1, bands, h, w): the mirrored real scene from its start to the end of chunk
    (row + 1, col + 1), padded as the engine pads the scene's edges (symmetric, by the halo)."""
    ends, pads = [], []
    for axis, index in ((0, row), (1, col)):
        stops, pad = task.grid.axes[axis].stops, task.grid.axes[axis].pad
        ends.append(stops[min(index + 1, len(stops) - 1)])
        pads.append((pad, pad if ends[-1] == stops[-1] else 0))
    image = _common.real_scene_numpy(max(ends), bands)[:ends[0], :ends[1]].transpose(2, 0, 1)
    return np.pad(image, [(0, 0), *pads], mode="symmetric")[None]


def run_chunk(task: Any, padded: np.ndarray, row: int, col: int) -> tuple[StageTimer, float,
                                                                           np.ndarray]:
    """The engine's tasks for one chunk, instrumented: ``prepare`` of its pixels, the sums of
    the tiles it owns (their image assembled from its and its neighbours' prepared sums) and
    its output (its sums plus those of the chunks before it, computed beforehand), as
    :mod:`xcloud.engine.tile_once` runs them on ``padded`` (see :func:`padded_scene`)."""
    shared = importlib.import_module("xcloud.engine.tile_once")
    grid = task.grid
    pads = [axis.pad for axis in grid.axes]
    spans = [shared._padded_spans(
        (pads[axis], *np.diff((0, *grid.axes[axis].stops)).tolist(), pads[axis]), pads[axis])
        for axis in (0, 1)]
    first = [1 if pad else 0 for pad in pads]
    prepared: dict[tuple[int, int], Any] = {}

    def prepare(p: int, q: int) -> Any:
        if (p, q) not in prepared:
            (top, bottom), (left, right) = spans[0][p], spans[1][q]
            block = padded[..., top + pads[0]:bottom + pads[0], left + pads[1]:right + pads[1]]
            prepared[p, q] = shared.prepare(block, task, (top, left))
        return prepared[p, q]

    def under(r: int, c: int) -> tuple[Any, list[tuple[int, int]]]:
        window = grid.tiles_window(r, c, task.tiles.size)
        return window, [(p, q) for p in shared._under(spans[0], window[0], grid.zoom)
                        for q in shared._under(spans[1], window[1], grid.zoom)]

    def sums(r: int, c: int) -> Any:
        window, chunks = under(r, c)
        return shared.tile_sums(task, r, c, [shared._crop_prepared(prepare(p, q), window)
                                             for p, q in chunks])

    own = (row + first[0], col + first[1])
    with engine_threads(1):
        before = [sums(r, c) for r in (row - 1, row) for c in (col - 1, col)
                  if r >= 0 and c >= 0 and (r, c) != (row, col)]  # model loaded, kernels
        for p, q in under(row, col)[1]:  # compiled, the neighbours' sums prepared
            prepare(p, q)
        del prepared[own]  # prepared again below, timed
        timer = StageTimer()
        with instrumented(timer):
            start = time.perf_counter()
            empty = prepare(*own)[1]
            output = grid.output_window(row, col)
            pieces = [shared._crop(sums_, output) for sums_ in [*before, sums(row, col)]]
            out = shared.combine(task, row, col, empty, pieces)
            total = time.perf_counter() - start
    return timer, total, out


def measure_write(classes: np.ndarray, size: int, chunk: int, region: tuple[slice, slice],
                  tmp: Path, repeats: int) -> float:
    """Seconds for to_zarr's chunk writer to write one chunk of classes (and its marker)."""
    import dask.array as da
    import xarray as xr

    from xcloud.outputs.store import store_location
    from xcloud.outputs.zarr import _ChunkTarget, _write_chunk

    store = tmp / "mask.zarr"
    zeros = da.zeros((1, size, size), chunks=(1, chunk, chunk), dtype=np.uint8)
    xr.Dataset({"cloudmask": (("time", "y", "x"), zeros)}).to_zarr(
        store, compute=False, zarr_format=3, consolidated=False)
    target = _ChunkTarget(store_location(store), "cloudmask", 3, (slice(0, 1), *region),
                          ".xcloud/done/_root/cloudmask/0.0.0", ".xcloud/failures")
    _write_chunk(classes[None], target)
    return best_of(lambda: _write_chunk(classes[None], target), repeats)


def read_amplification(task: Any, chunk: int) -> tuple[float, int]:
    """Source chunks ``to_zarr`` reads per output chunk, and its batch size.

    It computes neighbouring chunks in batches and carries the source chunks that later
    batches' halos need (:mod:`xcloud.engine.batches`): every source chunk is read once.
    """
    from xcloud.outputs.zarr import _batch_size

    with engine_threads(1):
        batch = _batch_size()
    return 1.0, batch


def stages(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Part 1: the stage table; returns what later parts compare with."""
    import xcloud

    info = xcloud.models.get(MODEL).info
    repeats = 2 if args.quick else 3
    meter = _common.Meter().start()
    read_s, scene_px, arrays = measure_read(info.bands, repeats)
    _, task = _common.predict_capturing(_common.real_scene(args.size, args.chunk, info.bands),
                                        model=MODEL, batch_size=args.batch_size,
                                        device=args.device)
    chunks = [len(axis.stops) for axis in task.grid.axes]
    row, col = (min(1, n - 1) for n in chunks)
    padded = padded_scene(task, row, col, info.bands)
    timer, total, out = run_chunk(task, padded, row, col)
    chunk_px = out.shape[-2] * out.shape[-1]
    write_s = measure_write(out[0], args.size, args.chunk,
                            tuple(slice(*span) for span in task.grid.chunk(row, col)),
                            tmp, repeats)
    upsample_s = measure_upsample(arrays, args.chunk, repeats)
    meter.stop()
    amplification, batch = read_amplification(task, args.chunk)
    tiles_run, tiles_unique = _common.engine_tiles(task, (args.size, args.size))
    per_chunk = args.size**2 / chunk_px  # chunk-equivalents in the scene
    seconds = timer.seconds
    model_s = seconds.pop("model", 0.0)
    blend_s = seconds.pop("tiles", 0.0) - model_s + seconds.pop("sum + blend", 0.0)
    per_tile = model_s / max(timer.tiles, 1)
    rest_s = total - model_s - blend_s - sum(seconds.values())
    table = [
        ("read + decode (JP2 -> reflectance)", read_s * chunk_px / scene_px,
         read_s * args.size**2 / scene_px * amplification,
         f"{1e6 * read_s / scene_px:.2f} s/Mpx; x{amplification:.2f} reads per source "
         f"(batches of {batch} chunks, shared sources carried)"),
        ("resample 20 m -> 10 m (load, numba)", upsample_s,
         upsample_s * per_chunk * amplification, f"x{amplification:.2f} per source"),
        *((name, value, value * per_chunk, "chunk (once per pixel)")
          for name, value in seconds.items()
          if name in ("no-data check", "normalise", "to model grid")),
        ("model predict_proba", model_s, per_tile * tiles_run,
         f"{1e3 * per_tile:.0f} ms/tile x {tiles_run} tiles ({tiles_unique} unique)"),
        ("tiles: cut, pad, weight, sum, blend", blend_s,
         blend_s / max(timer.tiles, 1) * tiles_run, "per tile"),
        *((name, value, value * per_chunk, "core") for name, value in seconds.items()
          if name in ("back to 10 m + classify", "classify")),
        ("rest of the tasks", rest_s, rest_s * per_chunk, "core"),
        ("write chunk to Zarr", write_s, write_s * per_chunk, "core"),
    ]
    cpu_total = sum(scene for _, _, scene, _ in table)
    rows = [[name, f"{chunk_s:.3f}", f"{scene:.1f}", f"{100 * scene / cpu_total:.1f} %", note]
            for name, chunk_s, scene, note in table]
    rows.append(["total (CPU seconds, one thread per task)", "", f"{cpu_total:.1f}", "100 %",
                 f"wall on {_cores()} cores >= {cpu_total / _cores():.1f} s"])
    _common.print_table(
        ["stage", f"one chunk s ({chunk_px / 1e6:.1f} Mpx)", f"scene s ({args.size}²)",
         "share", "scaled by"], rows,
        title=f"1. Where the time goes: {args.size}² in {args.chunk} px chunks on {args.device} "
              f"(chunk ({row}, {col}) of {chunks[0]} x {chunks[1]}, halo {task.grid.halo[0]} px, "
              f"model batch {args.batch_size}; {_common.NOISE_HEADER} "
              f"{meter.noise})")
    decode = table[0][2] + table[1][2]
    batches = math.ceil(chunks[0] * chunks[1] / batch)
    # the mirrored scene's chunks all read the one real scene: once per batch
    mirrored = cpu_total - decode + batches * (read_s + upsample_s * scene_px / chunk_px)
    return {"cpu_total": cpu_total, "decode": decode, "mirrored_total": mirrored}


# -- 2. model vs hardware ---------------------------------------------------------------------


def model_flops() -> float:
    """FLOPs of the torch port on one 256² tile (FlopCounterMode: convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    network = _torch_network()
    x = torch.zeros(1, network.config.in_channels, TILE, TILE)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(x.contiguous(memory_format=torch.channels_last))
    return float(counter.get_total_flops())


def _torch_network() -> Any:
    """The ukis torch port (float32, CPU), as the engine's torch runtime builds it."""
    from xcloud.models._onnx_import import efficientnet_unet_from_onnx
    from xcloud.models.ukis import _package_file

    return efficientnet_unet_from_onnx(_package_file("6b_l1c", ".onnx")).eval()


def matmul_rate(device: str, dtype: Any, n: int, repeats: int) -> float:
    """Measured FLOP/s of ``torch.matmul`` on n x n matrices."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def multiply() -> None:
        torch.matmul(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    multiply()
    return 2 * n**3 / best_of(multiply, repeats)


def model_vs_hardware(args: argparse.Namespace, flops: float) -> None:
    """Part 2: per-tile time of both runtimes against FLOPs and the matmul rate."""
    import torch

    import xcloud

    entry = xcloud.models.get(MODEL)
    repeats = 2 if args.quick else 5
    batch = np.random.default_rng(0).standard_normal((args.batch_size, 6, TILE, TILE),
                                                     np.float32)
    saved = torch.get_num_threads()
    rows = []
    meter = _common.Meter().start()
    try:
        for threads in sorted({1, _cores()}):
            torch.set_num_threads(threads)
            rate = matmul_rate("cpu", torch.float32, 2048, repeats + 1)
            rows.append(["torch.matmul 2048² float32", threads, "-",
                         f"{rate / 1e9:.1f}", "100 %"])
            for runtime in ("torch", "onnxruntime"):
                with engine_threads(threads):
                    model = entry.load(device="cpu", runtime=runtime)
                model.predict_proba(batch)
                seconds = best_of(lambda m=model: m.predict_proba(batch), repeats)
                per_tile = seconds / len(batch)
                achieved = flops / per_tile
                name = ("torch port (float32)" if runtime == "torch"
                        else "onnxruntime (shipped float16 graph)")
                rows.append([name, threads, f"{1e3 * per_tile:.0f}", f"{achieved / 1e9:.1f}",
                             f"{100 * achieved / rate:.0f} %"])
    finally:
        torch.set_num_threads(saved)
        meter.stop()
    _common.print_table(["what", "threads", "ms / tile", "GFLOP/s", "of matmul rate"], rows,
                        title=f"2. Model vs hardware: {flops / 1e9:.1f} GFLOP per {TILE}² tile "
                              f"(FlopCounterMode, torch port), batch {args.batch_size}; "
                              f"{_common.NOISE_HEADER} {meter.noise}")


# -- 3. end to end ----------------------------------------------------------------------------


def end_to_end(size: int, chunk: int, tmp: Path, **predict: Any) -> _common.Meter:
    """predict + to_zarr of the mirrored real scene (threaded scheduler), timed."""
    import dask

    import xcloud

    scene = _common.real_scene(size, chunk, xcloud.models.get(MODEL).info.bands)
    with dask.config.set(scheduler="threads"), _common.stopwatch() as meter:
        xcloud.to_zarr(xcloud.predict(scene, model=MODEL, **predict), tmp / "e2e.zarr",
                       overwrite=True)
    return meter


# -- 4. GPU -----------------------------------------------------------------------------------


def _time_batches(function: Callable[[], Any], device: str, minimum: float) -> float:
    """Seconds per call, averaged over enough calls to last ``minimum`` seconds."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    function()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        function()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= minimum and calls >= 3:
            return elapsed / calls


def gpu_sweep(device: str, flops: float, batches: list[int], compile_batch: int | None,
              minimum: float) -> None:
    """Part 4a: the torch port per dtype and batch size, eager and compiled."""
    import copy

    import torch

    base = _torch_network()
    stride_10m = 3 * (TILE - 52)  # new 10 m pixels per tile along each axis (30 m model)
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        try:
            peak = matmul_rate(device, dtype, 8192 if device.startswith("cuda") else 1024, 5)
            network = copy.deepcopy(base).to(device=device, dtype=dtype,
                                             memory_format=torch.channels_last)
        except (RuntimeError, TypeError) as error:
            rows.append([name, "-", "-", f"failed: {error}", "", "", "", ""])
            continue
        runs = [(False, b) for b in batches]
        if compile_batch:
            runs.append((True, compile_batch))
        for compiled, batch in runs:
            x = torch.randn(batch, base.config.in_channels, TILE, TILE, device=device)
            x = x.to(dtype).contiguous(memory_format=torch.channels_last)
            try:
                start = time.perf_counter()
                model = torch.compile(network) if compiled else network
                with torch.inference_mode():
                    model(x)  # compiles
                    first = time.perf_counter() - start
                    seconds = _time_batches(lambda m=model, t=x: m(t), device, minimum)
            except Exception as error:  # a failed variant is reported, not fatal
                rows.append([name, "on" if compiled else "off", batch,
                             f"failed: {type(error).__name__}: {str(error)[:80]}",
                             "", "", "", ""])
                continue
            tiles_s = batch / seconds
            rows.append([name, f"on ({first:.0f} s to compile)" if compiled else "off", batch,
                         f"{1e3 * seconds:.2f}", f"{tiles_s:.0f}",
                         f"{tiles_s * stride_10m**2 / 1e6:.0f}",
                         f"{flops * tiles_s / 1e12:.2f}", f"{100 * flops * tiles_s / peak:.0f} %"
                         f" of {peak / 1e12:.1f}"])
        del network
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    _common.print_table(["dtype", "torch.compile", "batch", "ms / batch", "tiles/s",
                         "10 m Mpx/s", "TFLOP/s", "of matmul TFLOP/s"], rows,
                        title=f"4a. GPU ({_common.describe_device() if device != 'cpu' else device}"
                              f"): the torch port per batch")


def gpu_section(args: argparse.Namespace, flops: float, decode_s: float, tmp: Path) -> None:
    """Part 4: sweep, then the full tile end to end on the GPU."""
    import torch

    device = args.gpu_device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("\n4. GPU: no CUDA device: GPU section skipped")
        return
    batches = QUICK_GPU_BATCHES if args.quick else GPU_BATCHES
    if device == "cpu":  # a check of this code path on a machine without CUDA
        batches = [1, 2]
    compile_batch = None if args.no_compile or args.quick else args.gpu_batch
    gpu_sweep(device, flops, batches, compile_batch, 0.2 if args.quick else 1.0)
    if device == "cpu":
        return
    meter = end_to_end(args.size, args.gpu_chunk, tmp, device=device, runtime="torch",
                       batch_size=args.gpu_batch)
    verdict = "meets" if meter.seconds < GPU_TARGET_S else "misses"
    rows = [[f"{args.size}²", args.gpu_chunk, args.gpu_batch, f"{meter.seconds:.1f}",
             f"{args.size**2 / meter.seconds / 1e6:.1f}", meter.noise]]
    _common.print_table(["image", "chunk", "batch", "s", "Mpx/s", _common.NOISE_HEADER], rows,
                        title=f"4b. End to end on {device} (predict + to_zarr, torch float32, "
                              f"CPU decode on {_cores()} threads)")
    print(f"{verdict} the < {GPU_TARGET_S:.0f} s target for a full tile"
          if args.size == 10980 else f"(the {GPU_TARGET_S:.0f} s target is for 10980²)")
    print(f"CPU floor for a real tile: reading + resampling {decode_s:.0f} CPU s "
          f"/ {_cores()} cores = {decode_s / _cores():.1f} s (part 1's figures)")


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--device", default="cpu",
                        help="device of parts 1 and 3 (part 4 uses CUDA when present)")
    parser.add_argument("--batch-size", type=int, default=4, help="model batch of parts 1-3")
    parser.add_argument("--no-e2e", action="store_true", help="skip part 3")
    parser.add_argument("--gpu-batch", type=int, default=16,
                        help="batch of torch.compile and of the GPU end-to-end run")
    parser.add_argument("--gpu-chunk", type=int, default=2048)
    parser.add_argument("--no-compile", action="store_true",
                        help="no torch.compile runs (--quick has none)")
    parser.add_argument("--gpu-device", help=argparse.SUPPRESS)  # e.g. cpu: check part 4's code
    _common.add_common_args(parser)
    args = parser.parse_args()
    _common.use_data(args.data)
    if args.quick:
        args.size, args.chunk = 2048, 1024
    _common.print_header("bench_profile: where the time goes, model vs hardware, GPU",
                         model=MODEL, image=f"{args.size}²", chunk=args.chunk,
                         device=args.device, batch=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        found = stages(args, Path(tmp))
        flops = model_flops()
        model_vs_hardware(args, flops)
        if not args.no_e2e:
            meter = end_to_end(args.size, args.chunk, Path(tmp), batch_size=args.batch_size,
                               device=args.device)
            real, mirrored = found["cpu_total"] / _cores(), found["mirrored_total"] / _cores()
            _common.print_table(
                ["image", "chunk", "measured s", "Mpx/s", "estimate: real tile s",
                 "estimate: this mirrored scene s", "not in the stages s",
                 _common.NOISE_HEADER],
                [[f"{args.size}²", args.chunk, f"{meter.seconds:.1f}",
                  f"{args.size**2 / meter.seconds / 1e6:.2f}", f"{real:.1f}",
                  f"{mirrored:.1f}", f"{meter.seconds - mirrored:.1f}", meter.noise]],
                title=f"3. End to end on {args.device} (threaded scheduler). The mirrored "
                      "scene reads its one real 1.2 Mpx scene once per batch of chunks, a real "
                      "tile reads "
                      "every chunk once; the rest of the difference is copies, transfers "
                      "between the tasks and scheduling")
        gpu_section(args, flops, found["decode"], Path(tmp))


if __name__ == "__main__":
    main()
