"""xcloud ``predict(model="s2cloudless")`` vs s2cloudless' own ``S2PixelCloudDetector``.

Both classify the same pixels: the real L1C scene (T33UUU, 768 x 1536 px at 10 m, its ten
s2cloudless bands read with ``xcloud.load``) mirrored to squares of ``--size`` pixels, held in
memory as one float32 array (the detector's interface). The scene's 16 NaN pixels of B8A (one
20 m no-data pixel) are set to 0, which LightGBM reads as it reads NaN (the detector's result
is the same) and which xcloud then does not reject as a partly invalid pixel.

- **Detector**: ``S2PixelCloudDetector(threshold=0.4, average_over=1, dilation_size=1,
  all_bands=False)``, ``get_cloud_masks`` (mask) or ``get_cloud_probability_maps`` (raw
  probability), on the whole image; LightGBM uses all cores.
- **xcloud**: ``predict(model="s2cloudless")`` (mask) or ``output="proba"`` (probability
  averaged over s2cloudless' disk, two classes) of a Dask array of the same pixels in
  ``--chunk`` px chunks (at most half the image, so that both cores work), Dask threaded
  scheduler; the default runtime evaluates the booster file with xcloud's numba kernels, one
  serial kernel per Dask thread.

Each run is a fresh process (peak RSS is that process's maximum resident set; times include
loading the model). Runs are repeated ``--repeats`` times, the tools alternated, and the best
time is kept; the masks must be identical. A last table times the bare evaluators on the same
pixels (``lightgbm.Booster.predict`` against ``xcloud.models._lightgbm``) in one process,
alternated, with their probabilities compared.

    python benchmarks/bench_s2cloudless.py --size 2048 4096
    python benchmarks/bench_s2cloudless.py --quick      # 1024² only, about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np

__all__ = ["main"]

QUICK_SIZE = 1024
TARGET = 2.0
KERNEL_ROWS, QUICK_KERNEL_ROWS = 1 << 20, 1 << 18
DETECTOR_CALLS = {"class": "get_cloud_masks", "proba": "get_cloud_probability_maps"}


def _image(size: int) -> np.ndarray:
    """The mirrored scene (size, size, 10) float32, NaN set to 0 (see the module's notes)."""
    image = _common.real_scene_numpy(size, _common.S2CLOUDLESS_BANDS)
    np.nan_to_num(image, copy=False, nan=0.0)
    return image


def run_detector(size: int, output: str, result_file: str) -> dict[str, Any]:
    """``S2PixelCloudDetector`` on the whole image (booster loaded inside the timing)."""
    from s2cloudless import S2PixelCloudDetector

    image = _image(size)[None]
    detector = S2PixelCloudDetector(threshold=0.4, average_over=1, dilation_size=1,
                                    all_bands=False)
    with _common.stopwatch() as meter:
        result = getattr(detector, DETECTOR_CALLS[output])(image)
    np.save(result_file, result[0])
    return meter.as_dict()


def run_xcloud(size: int, output: str, result_file: str, chunk: int) -> dict[str, Any]:
    """xcloud's chunked prediction of the same pixels (model loaded inside the timing)."""
    import dask
    import dask.array as da
    import xarray as xr

    import xcloud  # noqa: F401  (registers the accessor)

    image = _image(size)
    lazy = da.from_array(image.transpose(2, 0, 1), chunks=(image.shape[-1], chunk, chunk))
    cube = xr.DataArray(lazy, dims=("band", "y", "x"),
                        coords={"band": list(_common.S2CLOUDLESS_BANDS)})
    with _common.stopwatch() as meter, dask.config.set(scheduler="threads"):
        result = cube.cloudmask.predict(model="s2cloudless", output=output, resolution=10)
        values = result.values
    np.save(result_file, values if output == "class" else values[1])
    return meter.as_dict()


def _timed(function: Any) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def run_kernels(rows: int, repeats: int) -> dict[str, Any]:
    """Bare evaluators on the same pixels, alternated; best seconds and max |difference|."""
    from lightgbm import Booster

    from xcloud.models._lightgbm import load_model
    from xcloud.models.s2cloudless import _booster_path

    side = int(np.ceil(np.sqrt(rows)))
    features = np.ascontiguousarray(_image(side).reshape(-1, 10)[:rows])
    booster, trees = Booster(model_file=str(_booster_path())), load_model(_booster_path())
    cores = len(os.sched_getaffinity(0))
    cases = {
        "lightgbm Booster, 1 thread": lambda: booster.predict(features, num_threads=1),
        f"lightgbm Booster, {cores} threads": lambda: booster.predict(features,
                                                                      num_threads=cores),
        "xcloud numba, serial": lambda: trees.predict(features, threads=1),
        f"xcloud numba, parallel {cores} threads": lambda: trees.predict(features,
                                                                         threads=cores),
    }
    trees.predict(features[:70000], threads=cores)  # compile or load the kernels' cache
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    results = {}
    start_load = os.getloadavg()[0]
    for _ in range(repeats):
        for name, case in cases.items():
            elapsed, results[name] = _timed(case)
            seconds[name].append(elapsed)
    reference = results["lightgbm Booster, 1 thread"]
    return {"rows": rows, "load": [start_load, os.getloadavg()[0]],
            "seconds": {name: min(values) for name, values in seconds.items()},
            "max_diff": {name: float(np.abs(r - reference).max()) for name, r in results.items()}}


def _compare(output: str, detector_file: Path, xcloud_file: Path, chunk: int) -> str:
    """Differing mask pixels (and how many lie next to a chunk seam), or for probabilities
    the difference after averaging the detector's raw map as s2cloudless does
    (cv2.filter2D over its disk)."""
    theirs, ours = np.load(detector_file), np.load(xcloud_file)
    if output == "class":
        rows, cols = np.nonzero(theirs != ours)
        if rows.size == 0:
            return "identical"
        seam = np.isin(rows % chunk, (0, chunk - 1)) | np.isin(cols % chunk, (0, chunk - 1))
        return f"{rows.size} px differ ({int(seam.sum())} beside chunk seams)"
    import cv2
    from s2cloudless.utils import cv2_disk

    kernel = cv2_disk(1) / cv2_disk(1).sum()
    averaged = cv2.filter2D(theirs, -1, kernel, borderType=cv2.BORDER_REFLECT)
    return f"max diff {np.abs(averaged - ours).max():.1e}"


def _measure(size: int, output: str, chunk: int, repeats: int, folder: Path) -> list[Any]:
    """One table row: best of ``repeats`` alternated runs of each tool."""
    files = {tool: folder / f"{tool}-{size}-{output}.npy" for tool in ("detector", "xcloud")}
    runs: dict[str, list[dict[str, Any]]] = {"detector": [], "xcloud": []}
    for repeat in range(repeats):
        order = ("detector", "xcloud") if repeat % 2 == 0 else ("xcloud", "detector")
        for tool in order:
            _common.progress(f"{size}² {output}: {tool} (run {repeat + 1}/{repeats})")
            extra = {"chunk": chunk} if tool == "xcloud" else {}
            runs[tool].append(_common.run_child(__file__, tool, size=size, output=output,
                                                result_file=str(files[tool]), **extra))
    best = {tool: min(results, key=lambda r: r["seconds"]) for tool, results in runs.items()}
    megapixels = size**2 / 1e6
    cells = [f"{size}²", output, chunk]
    for tool in ("detector", "xcloud"):
        meter = _common.Meter.from_dict(best[tool])
        cells += [f"{meter.seconds:.1f}", f"{megapixels / meter.seconds:.3f}",
                  f"{best[tool]['peak_mib']:.0f}"]
    speed = best["detector"]["seconds"] / best["xcloud"]["seconds"]
    memory = best["xcloud"]["peak_mib"] / best["detector"]["peak_mib"]
    noise = ", ".join(_common.Meter.from_dict(r).noise for tool in runs for r in runs[tool])
    return [*cells, f"{speed:.2f}", f"{memory:.2f}",
            _compare(output, files["detector"], files["xcloud"], chunk), noise]


def _kernel_table(rows: int, repeats: int) -> None:
    _common.progress(f"bare evaluators on {rows} pixels")
    result = _common.run_child(__file__, "kernels", rows=rows, repeats=repeats)
    base = result["seconds"]["lightgbm Booster, 1 thread"]
    table = [[name, f"{seconds:.2f}", f"{rows / seconds / 1e6:.3f}", f"{base / seconds:.1f}",
              f"{result['max_diff'][name]:.1e}"]
             for name, seconds in result["seconds"].items()]
    load = " -> ".join(f"{value:.1f}" for value in result["load"])
    _common.print_table(["evaluator", "s", "Mpx/s", "vs Booster 1 thread",
                         "max |p - Booster|"], table,
                        title=f"Bare evaluators, {rows} pixels of the scene, best of {repeats} "
                              f"(load average {load}):")


def main() -> None:
    if _common.serve_child({"detector": run_detector, "xcloud": run_xcloud,
                            "kernels": run_kernels}):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--chunk", type=int, default=1024,
                        help="xcloud's chunk size (at most half the image)")
    parser.add_argument("--output", nargs="+", default=["class", "proba"],
                        choices=["class", "proba"])
    parser.add_argument("--repeats", type=int, default=2)
    _common.add_common_args(parser)
    args = parser.parse_args()
    _common.use_data(args.data)
    sizes = [QUICK_SIZE] if args.quick else args.size
    outputs, repeats = (["class"], 1) if args.quick else (args.output, args.repeats)
    _common.print_header("bench_s2cloudless: xcloud vs S2PixelCloudDetector, same pixels",
                         sizes=sizes, outputs=outputs, repeats=repeats, chunk=args.chunk)
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            for output in outputs:
                chunk = min(args.chunk, size // 2)
                table.append(_measure(size, output, chunk, repeats, Path(folder)))
    _common.print_table(
        ["image", "output", "xcloud chunk", "detector s", "detector Mpx/s", "detector MiB",
         "xcloud s", "xcloud Mpx/s", "xcloud MiB", "throughput ratio", "memory ratio",
         "agreement", _common.NOISE_HEADER], table)
    print(f"throughput ratio = detector s / xcloud s (target >= {TARGET}); "
          "memory ratio = xcloud peak / detector peak")
    _kernel_table(QUICK_KERNEL_ROWS if args.quick else KERNEL_ROWS, 2 if args.quick else 3)


if __name__ == "__main__":
    main()
