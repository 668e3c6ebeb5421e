"""Peak memory and speed of the main job on the real L1C scene tiled up to a large square.

The real scene (T33UUU, 2017-02-16, 768 x 1536 px at 10 m) is loaded lazily with
``xcloud.load`` from a static STAC item, mirrored to a ``--size`` square (still lazy: every chunk
reads from the JP2 files), masked with ``--model`` and written to Zarr chunk by chunk (Dask
threaded scheduler, default threads). Each size runs in its own process so its peak RSS is its
own.

    python benchmarks/bench_scene_to_zarr.py --size 8192 --chunk 2048
    python benchmarks/bench_scene_to_zarr.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import _common

QUICK_SIZES = [1024, 2048]


def run_one(size: int, chunk: int, model: str) -> dict[str, Any]:
    """Mask a ``size`` square of the real scene and write it to Zarr; time and chunk count."""
    import xcloud
    from xcloud.outputs.zarr import to_zarr

    info = xcloud.models.get(model).info
    scene = _common.real_scene(size, chunk, info.bands)
    with tempfile.TemporaryDirectory() as tmp, _common.stopwatch() as meter:
        mask = xcloud.predict(scene, model=model)
        summary = to_zarr(mask, Path(tmp) / f"mask-{size}.zarr")
    return {**meter.as_dict(), "chunks": summary.chunks_written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--model", default="ukis-6b-l1c")
    _common.add_common_args(parser)
    if _common.serve_child({"run_one": run_one}):
        return
    args = parser.parse_args()
    _common.use_data(args.data)
    sizes, chunk = (QUICK_SIZES, 1024) if args.quick else (args.size, args.chunk)
    _common.print_header("bench_scene_to_zarr: predict + to_zarr on the real scene mirrored",
                         model=args.model, chunk=chunk, scheduler="threads (default threads)")
    rows = []
    for size in sizes:
        result = _common.run_child(__file__, "run_one", size=size, chunk=chunk, model=args.model)
        meter = _common.Meter.from_dict(result)
        rows.append([f"{size}²", chunk, args.model, f"{meter.seconds:.1f}",
                     f"{size * size / meter.seconds / 1e6:.2f}", f"{result['peak_mib']:.0f}",
                     meter.noise])
    _common.print_table(["image", "chunk", "model", "s", "Mpx/s", "peak MiB",
                         _common.NOISE_HEADER], rows)


if __name__ == "__main__":
    main()
