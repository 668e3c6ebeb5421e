"""xcloud ``predict(model="ukis-6b-l1c")`` vs ukis-csmask's own ``CSmask``, one machine, one run.

Both run the same network on the same real data: ukis-csmask's labelled Sentinel-2 patch
(512 x 512 px, 6 bands, ~30 m), mirrored to a square of ``--size`` pixels. Each tool runs in
its own process so that peak RSS is its own. CSmask takes the whole image as a numpy array (its
interface); xcloud reads the same pixels lazily, chunk by chunk, as it would from odc-stac.

    python benchmarks/bench_ukis_vs_csmask.py --size 4096
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def _patch(data: Path) -> np.ndarray:
    with np.load(data / "labeled/ukis_csmask/sentinel2.npz") as archive:
        return archive["img"]


def _mirrored_tile(patch: np.ndarray, row: int, col: int) -> np.ndarray:
    tile = patch[::-1] if row % 2 else patch
    return tile[:, ::-1] if col % 2 else tile


def _reps(size: int, patch: np.ndarray) -> int:
    return -(-size // patch.shape[0])


def run_csmask(size: int, data: Path) -> float:
    from ukis_csmask.mask import CSmask

    patch = _patch(data)
    reps = _reps(size, patch)
    rows = [np.concatenate([_mirrored_tile(patch, r, c) for c in range(reps)], axis=1)
            for r in range(reps)]
    image = np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size], dtype=np.float32)
    assert image.shape == (size, size, len(BANDS))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CSmask(image, band_order=BANDS, product_level="l1c", batch_size=1).csm  # noqa: B018
    return time.perf_counter() - start


def run_xcloud(size: int, data: Path, chunk: int, runtime: str) -> float:
    import dask
    import dask.array as da
    import xarray as xr

    import xcloud  # noqa: F401

    patch = _patch(data).transpose(2, 0, 1)
    reps = _reps(size, patch.transpose(1, 2, 0))
    blocks = [[da.from_array(_mirrored_tile(patch.transpose(1, 2, 0), r, c).transpose(2, 0, 1),
                             chunks=-1) for c in range(reps)] for r in range(reps)]
    lazy = da.block(blocks)[:, :size, :size].rechunk((6, chunk, chunk))
    cube = xr.DataArray(lazy, dims=("band", "y", "x"), coords={"band": BANDS})
    mask = cube.cloudmask.predict(model="ukis-6b-l1c", resolution=30, runtime=runtime)
    start = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        mask.compute()
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    if args.tool == "csmask":
        seconds = run_csmask(args.size, args.data)
    else:
        seconds = run_xcloud(args.size, args.data, args.chunk, args.runtime)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def measure(tool: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", tool, "--size", str(args.size),
               "--chunk", str(args.chunk), "--runtime", args.runtime, "--data", str(args.data)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--runtime", default="auto", help="auto, torch or onnxruntime")
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("XCLOUD_TEST_DATA", default_data)))
    parser.add_argument("--child", choices=["csmask", "xcloud"], dest="tool")
    args = parser.parse_args()
    if args.tool:
        child(args)
        return
    megapixels = args.size**2 / 1e6
    print(f"image {args.size} x {args.size} px ({megapixels:.1f} Mpx), {os.cpu_count()} cores, "
          f"xcloud chunk {args.chunk}, runtime {args.runtime}, device cpu")
    results = {tool: measure(tool, args) for tool in ("csmask", "xcloud")}
    print(f"{'tool':<8} {'seconds':>8} {'Mpx/s':>7} {'peak RSS MiB':>13}")
    for tool, result in results.items():
        rate = megapixels / result["seconds"]
        print(f"{tool:<8} {result['seconds']:>8.1f} {rate:>7.3f} {result['peak_mib']:>13.0f}")
    speed = results["csmask"]["seconds"] / results["xcloud"]["seconds"]
    memory = results["xcloud"]["peak_mib"] / results["csmask"]["peak_mib"]
    print(f"xcloud / CSmask: throughput x{speed:.2f} (target >= 1.2), "
          f"peak memory x{memory:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
