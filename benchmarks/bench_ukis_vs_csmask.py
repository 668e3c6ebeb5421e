"""xcloud ``predict(model="ukis-6b-l1c")`` vs ukis-csmask's own ``CSmask``, one machine, one run.

Both run the same network on the same real data: ukis-csmask's labelled Sentinel-2 patch
(512 x 512 px, 6 bands, ~30 m), mirrored to a square of ``--size`` pixels. Each tool runs in
its own process so that peak RSS is its own. CSmask takes the whole image as a numpy array (its
interface; built in place, no temporary copies); xcloud reads the same pixels lazily, chunk by
chunk, as it would from odc-stac.

    python benchmarks/bench_ukis_vs_csmask.py --size 4096
    python benchmarks/bench_ukis_vs_csmask.py --quick
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import _common

QUICK_SIZE = 1024


def run_csmask(size: int, data: str) -> dict[str, Any]:
    """CSmask on the mirrored patch (onnxruntime, all cores, 256 px tiles, 20 % overlap)."""
    from ukis_csmask.mask import CSmask

    image = _common.patch_image(size, Path(data))
    with warnings.catch_warnings(), _common.stopwatch() as meter:
        warnings.simplefilter("ignore")
        _ = CSmask(image, band_order=list(_common.UKIS_BANDS), product_level="l1c",
                   batch_size=1).csm
    return meter.as_dict()


def run_xcloud(size: int, data: str, chunk: int, runtime: str) -> dict[str, Any]:
    """xcloud's lazy, chunked mask of the same pixels (Dask threaded scheduler)."""
    import dask

    import xcloud  # noqa: F401  (registers the accessor)

    cube = _common.patch_cube(size, chunk, Path(data))
    mask = cube.cloudmask.predict(model="ukis-6b-l1c", resolution=30, runtime=runtime)
    with dask.config.set(scheduler="threads"), _common.stopwatch() as meter:
        mask.compute()
    return meter.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--runtime", default="auto", help="auto, torch or onnxruntime")
    _common.add_common_args(parser)
    if _common.serve_child({"csmask": run_csmask, "xcloud": run_xcloud}):
        return
    args = parser.parse_args()
    data = _common.use_data(args.data)
    size, chunk = (QUICK_SIZE, QUICK_SIZE) if args.quick else (args.size, args.chunk)
    megapixels = size**2 / 1e6
    _common.print_header("bench_ukis_vs_csmask: xcloud vs ukis-csmask, same network and pixels",
                         image=f"{size}² ({megapixels:.1f} Mpx)", xcloud_chunk=chunk,
                         runtime=args.runtime)
    results = {
        "CSmask": _common.run_child(__file__, "csmask", size=size, data=str(data)),
        "xcloud": _common.run_child(__file__, "xcloud", size=size, data=str(data), chunk=chunk,
                                    runtime=args.runtime),
    }
    rows = []
    for tool, result in results.items():
        meter = _common.Meter.from_dict(result)
        rows.append([tool, f"{size}²", chunk if tool == "xcloud" else "-",
                     f"{meter.seconds:.1f}", f"{megapixels / meter.seconds:.3f}",
                     f"{result['peak_mib']:.0f}", meter.noise])
    _common.print_table(["tool", "image", "chunk", "s", "Mpx/s", "peak MiB",
                         _common.NOISE_HEADER], rows)
    speed = results["CSmask"]["seconds"] / results["xcloud"]["seconds"]
    memory = results["xcloud"]["peak_mib"] / results["CSmask"]["peak_mib"]
    print(f"xcloud / CSmask: throughput x{speed:.2f} (target >= 1.2), "
          f"peak memory x{memory:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
