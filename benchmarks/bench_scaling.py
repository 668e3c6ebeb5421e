"""Scaling of the main job: worker processes, threads vs processes, chunk size and halo.

The job is ``predict(model="ukis-6b-l1c")`` + ``to_zarr`` on the real L1C scene mirrored to a
``--size`` square. ``--source files`` (default) first writes the mirrored bands as tiled,
deflated GeoTIFFs at their native resolutions and loads them with ``xcloud.load``, so that each
chunk reads its own window, as in a real tile; ``--source mirror`` mirrors the small scene
lazily from its JP2 files (as ``bench_scene_to_zarr.py``), where every chunk derives from the
same few reads (which then have to reach every worker process).

1. **Workers.** ``xcloud.local_cluster`` with 1 and 2 worker processes of one thread each
   (target: >= 1.8x on 2 cores), one worker process with 2 threads, and the Dask threaded
   scheduler (no ``distributed``), at each ``--chunk`` size (default 1024 and 2048) and the
   default halo. The ``tasks`` column counts the tasks of the mask's optimised graph (the Zarr
   writes add one per chunk), and a last line measures what
   ``distributed`` spends per task on this machine: in the 2-process run that overhead shares
   the two cores with the model, in the 1-process run it has the second core to itself.
2. **Chunk size and halo** (threaded scheduler): throughput for each chunk size and halo
   (0, half the default, the default). The halo is the price of seam-freedom: the table gives
   its cost against halo 0 and how many pixels differ from the default halo's mask (which
   equals the whole-image mask exactly). ``tiles`` counts the model tiles the chunks run
   against the scene's unique lattice tiles (tiles across chunk borders run in both chunks).

Every configuration first runs once on a small scene (loading models and compiled kernels in
each worker process, by a task pinned to each), then is timed; part 1's setups take turns
``--repeat`` times (default 3) and show the median run and the range. Chunks are enlarged to
at least the halo by the engine: the ``eff. chunk`` column says what ran.

    python benchmarks/bench_scaling.py                  # 4096², part 1 at chunks 1024/2048
    python benchmarks/bench_scaling.py --size 8192 --chunks 2048
    python benchmarks/bench_scaling.py --quick          # 1600², chunks 800/1600, halo 0/774
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import numpy as np

MODEL = "ukis-6b-l1c"
TARGET_SPEEDUP = 1.8
WARM_UP = 512  # size of the untimed first run in each setup


@dataclass(frozen=True)
class Setup:
    """Where the chunk tasks run: the threaded scheduler or a LocalCluster."""

    label: str
    workers: int = 0  # 0: the Dask threaded scheduler (default threads)
    threads: int = 1

    @contextmanager
    def scheduler(self) -> Iterator[None]:
        """A started cluster and client (closed on exit), or the threaded scheduler."""
        if not self.workers:
            import dask

            with dask.config.set(scheduler="threads"):
                yield
            return
        from distributed import Client

        import xcloud

        with xcloud.local_cluster(n_workers=self.workers, threads_per_worker=self.threads) \
                as cluster, Client(cluster) as client:
            # in every worker, not only the first to get a task; as a task (client.run would
            # run it outside the worker's thread pool, where xcloud sizes thread pools for the
            # synchronous scheduler and caches the model with them)
            client.gather([client.submit(warm_up_here, WARM_UP, workers=[address], pure=False)
                           for address in client.scheduler_info()["workers"]])
            yield


def warm_up_here(size: int) -> None:
    """Load the model and the compiled kernels in this process: a ``size``² job on the real
    scene with the synchronous scheduler (run on each worker with ``client.run``)."""
    import dask

    import xcloud
    from xcloud.data.load import load
    from xcloud.data.sample import sample_scene_dir, scene_item

    bands = list(xcloud.models.get(MODEL).info.bands)
    scene = load([scene_item(sample_scene_dir(download=False))], bands=bands, chunks=size)
    with dask.config.set(scheduler="sync"):
        xcloud.predict(scene.isel(y=slice(0, size), x=slice(0, size)), model=MODEL).compute()


@dataclass
class Run:
    """One timed job and what it produced."""

    setup: str
    chunk: int
    halo: int
    eff_chunk: int
    tiles: tuple[int, int]  # run by the chunks, unique in the scene
    tasks: int  # in the job's optimised graph
    meter: _common.Meter
    store: Path
    spread: str = ""  # fastest-slowest of the turns, when the configuration ran several

    def mpx_per_s(self, size: int) -> float:
        return size * size / self.meter.seconds / 1e6


def scene(size: int, chunk: int, files: Path | None) -> Any:
    """The lazy input: read chunk by chunk from the mirrored band files in ``files``
    (written there first if needed), or (``None``) the small scene mirrored lazily."""
    import xcloud

    bands = xcloud.models.get(MODEL).info.bands
    if files is None:
        return _common.real_scene(size, chunk, bands)
    return _common.real_scene_files(size, chunk, bands, files / f"scene-{size}")


def job(size: int, chunk: int, halo: int | None, store: Path,
        files: Path | None = None) -> tuple[_common.Meter, int, tuple[int, int], int]:
    """Time predict + to_zarr once: the meter, the effective chunk, tiles run and unique, and
    the tasks of the optimised graph."""
    import dask

    import xcloud

    data = scene(size, chunk, files)
    with _common.stopwatch() as meter:
        mask, task = _common.predict_capturing(data, model=MODEL, halo=halo)
        xcloud.to_zarr(mask, store, overwrite=True)
    tiles, unique = _common.engine_tiles(task, (size, size))
    (optimised,) = dask.optimize(mask.data)
    return meter, int(mask.data.chunksize[-1]), (tiles, unique), len(optimised.dask)


def default_halo() -> int:
    """The engine's default halo of the model on 10 m input, in input pixels."""
    import xcloud

    info = xcloud.models.get(MODEL).info
    return math.ceil(info.context / (10.0 / info.resolution))


def agreement(store: Path, reference: Path) -> str:
    """Share of pixels whose class equals the reference mask's."""
    import xarray as xr

    ours = xr.open_zarr(store)["cloud_mask"].values
    theirs = xr.open_zarr(reference)["cloud_mask"].values
    equal = float(np.mean(ours == theirs))
    return "identical" if equal == 1.0 else f"{100 * equal:.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, nargs="+", default=[1024, 2048],
                        help="chunk sizes of part 1")
    parser.add_argument("--chunks", type=int, nargs="+", default=[512, 1024, 2048],
                        help="chunk sizes of part 2")
    parser.add_argument("--source", choices=("files", "mirror"), default="files",
                        help="files: the scene mirrored into band GeoTIFFs, each chunk reading "
                             "its window (as a real tile); mirror: the small scene mirrored "
                             "lazily (every chunk derives from its few reads)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="turns of part 1's setups; the median is shown (--quick: 1)")
    _common.add_common_args(parser)
    args = parser.parse_args()
    _common.use_data(args.data)
    full = default_halo()
    if args.quick:
        args.size, args.chunk, args.chunks, args.repeat = 1600, [800], [800, 1600], 1
        grid = [(800, 0), (800, full), (1600, full)]
    else:
        grid = [(chunk, halo) for chunk in args.chunks for halo in (0, full // 2, full)]
    cores = os.cpu_count() or 1
    _common.print_header("bench_scaling: workers, threads vs processes, chunk size and halo",
                         model=MODEL, image=f"{args.size}²", source=args.source,
                         part1_chunks=args.chunk, part1_turns=args.repeat,
                         default_halo=f"{full} px", cores=cores)
    setups = [Setup("LocalCluster 1 process x 1 thread", workers=1),
              Setup("LocalCluster 2 processes x 1 thread", workers=2),
              Setup(f"LocalCluster 1 process x {cores} threads", workers=1, threads=cores),
              Setup(f"threaded scheduler ({cores} threads)")]
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_all(args, setups, grid, full, Path(tmp))
        report(args, runs, setups, grid, full)


def run_all(args: argparse.Namespace, setups: list[Setup], grid: list[tuple[int, int]],
            full: int, tmp: Path) -> dict[tuple[str, int, int], Run]:
    """Every configuration, warmed up then timed, keyed by (setup, chunk, halo).

    Part 1's setups take turns ``args.repeat`` times (the median run is kept, with the range):
    on a shared machine a run's time moves by 10-20 % from one minute to the next. Part 2's
    grid runs once, in the first turn.
    """
    turns: dict[tuple[str, int, int], list[Run]] = {}
    threaded = setups[-1]
    files = tmp if args.source == "files" else None
    if files is not None:
        _common.progress(f"writing the {args.size}² scene's band files")
        scene(args.size, args.chunk[0], files)
    for turn in range(args.repeat):
        for setup in setups:
            todo = [(chunk, full) for chunk in args.chunk]
            if setup is threaded and turn == 0:
                todo += [config for config in grid if config not in todo]
            with setup.scheduler():
                job(WARM_UP, WARM_UP, None, tmp / "warm-up.zarr")  # the client's side too
                for chunk, halo in todo:
                    store = tmp / f"{setup.workers}-{setup.threads}-{chunk}-{halo}-{turn}.zarr"
                    meter, eff_chunk, tiles, tasks = job(args.size, chunk, halo, store, files)
                    turns.setdefault((setup.label, chunk, halo), []).append(
                        Run(setup.label, chunk, halo, eff_chunk, tiles, tasks, meter, store))
                    _common.progress(f"turn {turn + 1}: {setup.label}, chunk {chunk}, halo "
                                     f"{halo}: {meter.seconds:.1f} s ({meter.noise})")
    return {key: _median(runs) for key, runs in turns.items()}


def _median(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda run: run.meter.seconds)
    median = ordered[len(ordered) // 2]
    if len(runs) > 1:
        median.spread = f"{ordered[0].meter.seconds:.1f}-{ordered[-1].meter.seconds:.1f}"
    return median


def report_workers(size: int, chunk: int, part1: list[Run]) -> None:
    """Part 1's table at one chunk size, and its speed-ups."""
    base = part1[0]
    reference = part1[-1].store
    rows = [[run.setup, run.eff_chunk, run.tasks, f"{run.meter.seconds:.1f}", run.spread or "-",
             f"{run.mpx_per_s(size):.2f}", f"{base.meter.seconds / run.meter.seconds:.2f}x",
             agreement(run.store, reference), run.meter.noise] for run in part1]
    _common.print_table(["setup", "eff. chunk", "tasks", "s (median)", "s range", "Mpx/s",
                         "vs 1 process", "mask vs threaded", _common.NOISE_HEADER], rows,
                        title=f"1. Workers ({size}², chunk {chunk}, default halo)")
    one, two, threads_in_worker, threaded = part1
    speedup = one.meter.seconds / two.meter.seconds
    verdict = "meets" if speedup >= TARGET_SPEEDUP else "misses"
    print(f"chunk {chunk}: 2 vs 1 worker processes: {speedup:.2f}x ({verdict} the >= "
          f"{TARGET_SPEEDUP}x target); 2 processes x 1 thread are "
          f"{threaded.meter.seconds / two.meter.seconds:.2f}x the threaded scheduler, "
          f"{threads_in_worker.meter.seconds / two.meter.seconds:.2f}x one process with threads")


@dataclass(frozen=True)
class TaskOverhead:
    """What ``distributed`` spends per task, apart from the task's own work."""

    tasks: int
    scheduler_ms: float  # CPU of the process that runs the scheduler (and the client)
    worker_ms: float  # CPU of the worker process
    latency_ms: float  # wall time per task of a chain, where each task waits for the last


def _no_op(*_: Any) -> int:
    return 0


def task_overhead(tasks: int = 1000) -> TaskOverhead:
    """Measure :class:`TaskOverhead` on a 1-worker ``LocalCluster``: a chain of no-op tasks,
    each also needing two earlier ones (as chunk tasks need their neighbours')."""
    import time

    import psutil
    from distributed import Client

    import xcloud

    graph: dict[Any, Any] = {("no-op", 0): (_no_op,)}
    for i in range(1, tasks):
        graph[("no-op", i)] = (_no_op, *[("no-op", j) for j in (i - 1, i - 7, i - 30) if j >= 0])
    with xcloud.local_cluster(n_workers=1) as cluster, Client(cluster) as client:
        client.get(graph, [("no-op", 9)])  # connections and imports
        processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
        before = [sum(p.cpu_times()[:2]) for p in processes]
        start = time.perf_counter()
        client.get(graph, [("no-op", tasks - 1)])
        seconds = time.perf_counter() - start
        used = [sum(p.cpu_times()[:2]) - b for p, b in zip(processes, before, strict=True)]
    return TaskOverhead(tasks, 1e3 * used[0] / tasks, 1e3 * sum(used[1:]) / tasks,
                        1e3 * seconds / tasks)


def report(args: argparse.Namespace, runs: dict[tuple[str, int, int], Run],
           setups: list[Setup], grid: list[tuple[int, int]], full: int) -> None:
    """The two tables and the speed-ups."""
    size = args.size
    for chunk in args.chunk:
        report_workers(size, chunk, [runs[setup.label, chunk, full] for setup in setups])
    overhead = task_overhead()
    print(f"distributed's cost per task on this machine (a {overhead.tasks}-task chain of no-op "
          f"tasks, 1 worker): {overhead.scheduler_ms:.2f} ms CPU in the scheduler's process + "
          f"{overhead.worker_ms:.2f} ms in the worker, {overhead.latency_ms:.1f} ms from one "
          "task's end to the next's start. One worker leaves the scheduler a core of its own; "
          "two workers on two cores pay it on the cores that run the model.")

    threaded_label = setups[-1].label
    rows = []
    for chunk, halo in grid:
        run = runs[threaded_label, chunk, halo]
        no_halo = runs.get((threaded_label, chunk, 0))
        reference = runs.get((threaded_label, chunk, full))
        overhead = (f"{run.meter.seconds / no_halo.meter.seconds - 1:+.0%}" if no_halo
                    else "-")
        rows.append([chunk, run.eff_chunk, halo, f"{run.meter.seconds:.1f}",
                     f"{run.mpx_per_s(size):.2f}", overhead,
                     f"{run.tiles[0]} / {run.tiles[1]} = {run.tiles[0] / run.tiles[1]:.2f}",
                     agreement(run.store, reference.store) if reference else "-",
                     run.meter.noise])
    _common.print_table(["chunk", "eff. chunk", "halo px", "s", "Mpx/s", "time vs halo 0",
                         "tiles run / unique", "mask vs default halo",
                         _common.NOISE_HEADER], rows,
                        title=f"2. Chunk size and halo ({size}², {threaded_label})")


if __name__ == "__main__":
    main()
