"""Peak memory and speed of the main job on the real L1C scene tiled up to a large square.

The real scene (T33UUU, 2017-02-16, 768 x 1536 px at 10 m) is loaded lazily with
``xcloud.load`` from a static STAC item, mirrored to a ``--size`` square (still lazy: every chunk
reads from the JP2 files), masked with ``--model`` and written to Zarr chunk by chunk. Each size
runs in its own process so its peak RSS is its own.

    python benchmarks/bench_scene_to_zarr.py --size 8192 --chunk 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _mirrored(array, size: int):
    import dask.array as da

    rows = -(-size // array.shape[-2])
    cols = -(-size // array.shape[-1])
    flipped_rows = [array if r % 2 == 0 else array[..., ::-1, :] for r in range(rows)]
    tall = da.concatenate(flipped_rows, axis=-2)
    flipped_cols = [tall if c % 2 == 0 else tall[..., ::-1] for c in range(cols)]
    return da.concatenate(flipped_cols, axis=-1)[..., :size, :size]


def _scene(size: int, chunk: int, bands: list[str]):
    import numpy as np
    import xarray as xr

    from xcloud.data.load import load
    from xcloud.data.sample import sample_scene_dir, scene_item

    data = load([scene_item(sample_scene_dir())], bands=bands, chunks=chunk)
    x0, y0 = float(data.x[0]), float(data.y[0])
    coords = {"time": data.time, "y": y0 - 10.0 * np.arange(size),
              "x": x0 + 10.0 * np.arange(size), "spatial_ref": data.spatial_ref}
    variables = {name: (("time", "y", "x"),
                        _mirrored(data[name].data, size).rechunk((1, chunk, chunk)))
                 for name in bands}
    return xr.Dataset(variables, coords=coords, attrs=data.attrs)


def run_one(size: int, chunk: int, model: str, out: Path) -> dict:
    import xcloud
    from xcloud.outputs.zarr import to_zarr

    info = xcloud.models.get(model).info
    scene = _scene(size, chunk, list(info.bands))
    start = time.perf_counter()
    mask = xcloud.predict(scene, model=model)
    summary = to_zarr(mask, out / f"mask-{size}.zarr")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "chunk": chunk, "model": model, "seconds": seconds,
            "mpx_per_s": size * size / seconds / 1e6, "peak_mib": peak,
            "chunks": summary.chunks_written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--model", default="ukis-6b-l1c")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(args.size[0], args.chunk, args.model, Path(tmp))))
        return
    print(f"{'size':>6} {'chunk':>6} {'model':<12} {'s':>7} {'Mpx/s':>6} {'peak MiB':>9}")
    for size in args.size:
        command = [sys.executable, __file__, "--one", "--size", str(size),
                   "--chunk", str(args.chunk), "--model", args.model]
        result = json.loads(subprocess.run(command, capture_output=True, text=True,
                                           check=True).stdout.splitlines()[-1])
        print(f"{size:>6} {args.chunk:>6} {args.model:<12} {result['seconds']:7.1f} "
              f"{result['mpx_per_s']:6.2f} {result['peak_mib']:9.0f}")


if __name__ == "__main__":
    main()
