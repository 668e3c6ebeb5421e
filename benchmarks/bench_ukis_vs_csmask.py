"""xcloud ``predict(model="ukis-6b-l1c")`` vs ukis-csmask's own ``CSmask``, one machine, one run.

Both run the same network on the same real data: ukis-csmask's labelled Sentinel-2 patch
(512 x 512 px, 6 bands, ~30 m), mirrored to a square of ``--size`` pixels. Each tool runs in
its own process so that peak RSS is its own. CSmask takes the whole image as a numpy array (its
interface; built in place, no temporary copies); xcloud reads the same pixels lazily, chunk by
chunk, as it would from odc-stac.

xcloud runs the same 256 px tiles as CSmask (its lattice and 52 px overlap: the same pixels
through the same network), and, as extra rows, with a smaller tile overlap (fewer tiles); the
last column says how many pixels get CSmask's class. The tools take turns ``--repeat`` times
(default 3) and each row shows its median run and the range: on a shared machine the same run
varies by 10-20 % from one minute to the next.

    python benchmarks/bench_ukis_vs_csmask.py                    # 2048², 4096², 8192²; chunk 1024
    python benchmarks/bench_ukis_vs_csmask.py --size 4096 --chunk 2048 --tile-overlap
    python benchmarks/bench_ukis_vs_csmask.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import _common

QUICK_SIZE = 1024


def run_csmask(size: int, data: str, out: str) -> dict[str, Any]:
    """CSmask on the mirrored patch (onnxruntime, all cores, 256 px tiles, 20 % overlap)."""
    import numpy as np
    from ukis_csmask.mask import CSmask

    image = _common.patch_image(size, Path(data))
    with warnings.catch_warnings(), _common.stopwatch() as meter:
        warnings.simplefilter("ignore")
        mask = CSmask(image, band_order=list(_common.UKIS_BANDS), product_level="l1c",
                      batch_size=1).csm
    np.save(out, mask[..., 0].astype(np.uint8))
    return meter.as_dict()


def run_xcloud(size: int, data: str, chunk: int, runtime: str, out: str,
               tile_overlap: int | None = None) -> dict[str, Any]:
    """xcloud's lazy, chunked mask of the same pixels (Dask threaded scheduler)."""
    import dask
    import numpy as np

    import xcloud  # noqa: F401  (registers the accessor)

    cube = _common.patch_cube(size, chunk, Path(data))
    mask = cube.cloudmask.predict(model="ukis-6b-l1c", resolution=30, runtime=runtime,
                                  tile_overlap=tile_overlap)
    with dask.config.set(scheduler="threads"), _common.stopwatch() as meter:
        values = mask.values
    np.save(out, values)
    return meter.as_dict()


def _median_runs(calls: list[tuple[str, dict[str, Any]]], repeat: int) -> list[dict[str, Any]]:
    """Each call's median run by wall time, the calls taking turns ``repeat`` times (so a slow
    spell of a shared machine hits all tools alike); ``range`` holds the fastest and slowest."""
    runs: list[list[dict[str, Any]]] = [[] for _ in calls]
    for _ in range(repeat):
        for results, (call, kwargs) in zip(runs, calls, strict=True):
            results.append(_common.run_child(__file__, call, **kwargs))
    medians = []
    for results in runs:
        ordered = sorted(results, key=lambda result: result["seconds"])
        median = dict(ordered[len(ordered) // 2])
        median["range"] = f"{ordered[0]['seconds']:.1f}-{ordered[-1]['seconds']:.1f}"
        medians.append(median)
    return medians


def compare(size: int, chunk: int, data: Path, runtime: str, overlaps: list[int],
            tmp: Path, repeat: int = 1) -> list[list[Any]]:
    """One size: CSmask, xcloud as CSmask tiles (the model's overlap), xcloud with each of
    ``overlaps``; table rows with the ratios and the share of pixels equal to CSmask's mask."""
    import numpy as np

    names = ["csmask", *(f"xcloud-{overlap}" for overlap in [None, *overlaps])]
    calls = [("csmask", {"size": size, "data": str(data), "out": str(tmp / "csmask.npy")})]
    calls += [("xcloud", {"size": size, "data": str(data), "chunk": chunk, "runtime": runtime,
                          "out": str(tmp / f"{name}.npy"), "tile_overlap": overlap})
              for name, overlap in zip(names[1:], [None, *overlaps], strict=True)]
    results = _median_runs(calls, repeat)
    reference, base = np.load(tmp / "csmask.npy"), results[0]
    rows = []
    for name, (call, kwargs), result in zip(names, calls, results, strict=True):
        meter = _common.Meter.from_dict(result)
        overlap = kwargs.get("tile_overlap", "-")
        agree = (np.load(tmp / f"{name}.npy") == reference).mean()
        rows.append(["CSmask" if call == "csmask" else "xcloud", f"{size}²",
                     chunk if call == "xcloud" else "-",
                     "52 (= CSmask)" if call == "xcloud" and overlap is None else overlap,
                     f"{meter.seconds:.1f}", result["range"],
                     f"{size**2 / 1e6 / meter.seconds:.3f}",
                     f"{result['peak_mib']:.0f}", f"{base['seconds'] / meter.seconds:.2f}",
                     f"{result['peak_mib'] / base['peak_mib']:.2f}", f"{100 * agree:.2f} %",
                     meter.noise])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--runtime", default="auto", help="auto, torch or onnxruntime")
    parser.add_argument("--tile-overlap", type=int, nargs="*", default=[32],
                        help="extra xcloud rows with these tile overlaps (model px)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per tool, taking turns; the median is shown (--quick: 1)")
    _common.add_common_args(parser)
    if _common.serve_child({"csmask": run_csmask, "xcloud": run_xcloud}):
        return
    args = parser.parse_args()
    data = _common.use_data(args.data)
    sizes, chunk = ([QUICK_SIZE], QUICK_SIZE) if args.quick else (args.size, args.chunk)
    repeat = 1 if args.quick else args.repeat
    _common.print_header("bench_ukis_vs_csmask: xcloud vs ukis-csmask, same network and pixels",
                         sizes=" ".join(f"{s}²" for s in sizes), xcloud_chunk=chunk,
                         runtime=args.runtime, repeat=repeat)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            rows += compare(size, chunk, data, args.runtime, args.tile_overlap, Path(tmp),
                            repeat)
    _common.print_table(["tool", "image", "chunk", "tile overlap", "s (median)", "s range",
                         "Mpx/s", "peak MiB",
                         "throughput ratio", "memory ratio", "= CSmask", _common.NOISE_HEADER],
                        rows)
    print("ratios against CSmask on the same image (targets: throughput >= 1.2, memory <= 0.5); "
          "'= CSmask': share of pixels with CSmask's class")


if __name__ == "__main__":
    main()
