"""Peak memory vs scene size: xcloud's chunked job against the peers' whole-image interfaces.

Each run is a fresh process; its peak RSS (the maximum resident set, or the sampled sum over its
process tree when it starts Dask workers) is what the table shows.

- **xcloud**: the real L1C scene mirrored to a square, read lazily from its JP2 files,
  ``predict`` + ``to_zarr`` (the main job), on the Dask threaded scheduler with its default
  threads (one process), and with ``--workers N`` also on a ``LocalCluster`` of N worker
  processes of one thread each (``xcloud.local_cluster``).
- **CSmask** (ukis-csmask): the same network on ukis-csmask's labelled patch mirrored to a
  square, the whole image in RAM as its interface requires.
- **s2cloudless** (``S2PixelCloudDetector``, default settings): the real scene's ten bands
  mirrored to a square, the whole image in RAM.

A peer size is skipped, with the reason printed, when its peak memory extrapolated from the
sizes already measured (linearly in pixels) would not fit in the available RAM, or its time
would exceed ``--max-peer-minutes``.

    python benchmarks/bench_memory.py                       # 2048, 4096, 8192, 10980
    python benchmarks/bench_memory.py --chunk 1024 --workers 1
    python benchmarks/bench_memory.py --quick               # 1024, 2048
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common

SIZES = [2048, 4096, 8192, 10980]
QUICK_SIZES = [1024, 2048]
FULL_TILE = 10980
TARGET_MIB = 4096
_RAM_MARGIN = 0.9  # share of the available memory a peer may be expected to use
# before a peer's first size is measured: bytes per pixel and Mpx/s, from runs on 2 cores
_PRIOR_BYTES_PER_PX = {"CSmask": 240.0, "s2cloudless": 100.0}
_PRIOR_MPX_PER_S = {"CSmask": 0.4, "s2cloudless": 0.05}
_PRIOR_BASE_MIB = 500.0


def run_xcloud(size: int, chunk: int, model: str, workers: int) -> dict[str, Any]:
    """predict + to_zarr of the mirrored real scene; threads (workers 0) or a LocalCluster."""
    import xcloud
    from xcloud.outputs.zarr import to_zarr

    scene = _common.real_scene(size, chunk, xcloud.models.get(model).info.bands)
    client = cluster = None
    if workers:
        from distributed import Client

        cluster = xcloud.local_cluster(n_workers=workers)
        client = Client(cluster)
    try:
        with tempfile.TemporaryDirectory() as tmp, _common.stopwatch() as meter:
            summary = to_zarr(xcloud.predict(scene, model=model), Path(tmp) / "mask.zarr")
    finally:
        if client is not None:
            client.close()
            cluster.close()
    return {**meter.as_dict(), "chunks": summary.chunks_written}


def run_csmask(size: int, data: str) -> dict[str, Any]:
    """ukis-csmask's CSmask on the labelled patch mirrored (whole image in RAM)."""
    from ukis_csmask.mask import CSmask

    image = _common.patch_image(size, Path(data))
    with warnings.catch_warnings(), _common.stopwatch() as meter:
        warnings.simplefilter("ignore")
        _ = CSmask(image, band_order=list(_common.UKIS_BANDS), product_level="l1c",
                   batch_size=1).csm
    return meter.as_dict()


def run_s2cloudless(size: int) -> dict[str, Any]:
    """s2cloudless' S2PixelCloudDetector on the real scene's 10 bands mirrored (in RAM)."""
    from s2cloudless import S2PixelCloudDetector

    image = _common.real_scene_numpy(size, _common.S2CLOUDLESS_BANDS)[None]
    with warnings.catch_warnings(), _common.stopwatch() as meter:
        warnings.simplefilter("ignore")
        S2PixelCloudDetector().get_cloud_masks(image)
    return meter.as_dict()


@dataclass
class Curve:
    """One tool's measured (pixels, peak MiB, seconds), to extrapolate to larger sizes."""

    tool: str
    points: list[tuple[float, float, float]] = field(default_factory=list)

    def estimate(self, pixels: float) -> tuple[float, float | None]:
        """Peak MiB and seconds at ``pixels``, linear in pixels (priors until measured)."""
        if len(self.points) >= 2:
            (p0, m0, _), (p1, m1, s1) = self.points[-2:]
            slope = max(0.0, (m1 - m0) / (p1 - p0))
            return m1 + slope * (pixels - p1), s1 * pixels / p1
        prior = _PRIOR_BYTES_PER_PX.get(self.tool, 0.0) / 2**20
        if self.points:
            p1, m1, s1 = self.points[-1]
            return m1 + prior * (pixels - p1), s1 * pixels / p1
        rate = _PRIOR_MPX_PER_S.get(self.tool)
        return _PRIOR_BASE_MIB + prior * pixels, pixels / 1e6 / rate if rate else None


def skip_reason(curve: Curve, size: int, max_minutes: float) -> str | None:
    """Why a peer is not run at ``size`` (memory or time, extrapolated), or None."""
    peak, seconds = curve.estimate(size * size)
    available = _common.available_gib() * 1024
    if peak > _RAM_MARGIN * available:
        return (f"skipped: needs ~{peak / 1024:.1f} GiB (extrapolated), "
                f"{available / 1024:.1f} GiB available")
    if seconds is not None and seconds > 60 * max_minutes:
        return (f"skipped: ~{seconds / 60:.0f} min (extrapolated) > --max-peer-minutes "
                f"{max_minutes:g}; peak would be ~{peak / 1024:.1f} GiB")
    return None


def _row(tool: str, setup: str, size: int, result: dict[str, Any]) -> list[str]:
    meter = _common.Meter.from_dict(result)
    return [tool, setup, f"{size}²", f"{meter.seconds:.1f}",
            f"{size * size / meter.seconds / 1e6:.2f}", f"{result['peak_mib']:.0f}", meter.noise]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=SIZES)
    parser.add_argument("--chunk", type=int, nargs="+", default=[1024, 2048],
                        help="xcloud chunk sizes, one curve each")
    parser.add_argument("--model", default="ukis-6b-l1c", help="xcloud's model")
    parser.add_argument("--workers", type=int, nargs="*", default=[],
                        help="also run xcloud on a LocalCluster of N worker processes")
    parser.add_argument("--peers", nargs="*", default=["CSmask", "s2cloudless"],
                        choices=["CSmask", "s2cloudless"])
    parser.add_argument("--max-peer-minutes", type=float, default=15.0,
                        help="skip a peer size whose extrapolated time is longer")
    _common.add_common_args(parser)
    if _common.serve_child({"xcloud": run_xcloud, "CSmask": run_csmask,
                            "s2cloudless": run_s2cloudless}):
        return
    args = parser.parse_args()
    data = _common.use_data(args.data)
    if args.quick:
        args.size, args.chunk, args.max_peer_minutes = QUICK_SIZES, [1024], 0.5
    _common.print_header("bench_memory: peak RSS vs scene size", sizes=args.size,
                         xcloud_model=args.model, xcloud_chunks=args.chunk,
                         xcloud_workers=["threads", *args.workers], peers=args.peers,
                         max_peer_minutes=args.max_peer_minutes)
    setups = [(chunk, 0) for chunk in args.chunk]
    setups += [(chunk, workers) for workers in args.workers for chunk in args.chunk]
    rows: list[list[str]] = []
    peaks: dict[str, dict[int, float]] = {}
    peer_curves = {peer: Curve(peer) for peer in args.peers}
    for size in args.size:
        for chunk, workers in setups:
            result = _common.run_child(__file__, "xcloud", size=size, chunk=chunk,
                                       model=args.model, workers=workers)
            setup = f"chunk {chunk}, " + (f"LocalCluster {workers}x1" if workers
                                          else "threads")
            rows.append(_row("xcloud", setup, size, result))
            peaks.setdefault(f"xcloud {setup}", {})[size] = result["peak_mib"]
            _common.progress(" ".join(rows[-1]))
        for peer, curve in peer_curves.items():
            reason = skip_reason(curve, size, args.max_peer_minutes)
            if reason:
                rows.append([peer, "whole image", f"{size}²", reason, "", "", ""])
            else:
                kwargs = {"data": str(data)} if peer == "CSmask" else {}
                result = _common.run_child(__file__, peer, size=size, **kwargs)
                curve.points.append((size * size, result["peak_mib"], result["seconds"]))
                rows.append(_row(peer, "whole image", size, result))
                peaks.setdefault(peer, {})[size] = result["peak_mib"]
            _common.progress(" ".join(rows[-1]))
    _common.print_table(["tool", "setup", "image", "s", "Mpx/s", "peak MiB",
                         _common.NOISE_HEADER], rows, title="Peak RSS per run")
    _print_curves(args.size, peaks)


def _print_curves(sizes: list[int], peaks: dict[str, dict[int, float]]) -> None:
    """Peak MiB per size side by side, and the growth from the smallest size measured."""
    rows = [[f"{size}²", *(f"{peak[size]:.0f}" if size in peak else "-"
                           for peak in peaks.values())] for size in sizes]
    growth = []
    for peak in peaks.values():
        measured = [size for size in sizes if size in peak]
        if len(measured) > 1:
            first, last = measured[0], measured[-1]
            growth.append(f"x{peak[last] / peak[first]:.2f} for x{last**2 / first**2:.0f} px")
        else:
            growth.append("-")
    rows.append(["growth", *growth])
    _common.print_table(["image", *peaks], rows, title="Peak MiB by scene size")
    for name, peak in peaks.items():
        if name.startswith("xcloud") and FULL_TILE in peak:
            verdict = "meets" if peak[FULL_TILE] < TARGET_MIB else "misses"
            print(f"{name}: full tile {peak[FULL_TILE]:.0f} MiB, {verdict} the "
                  f"< {TARGET_MIB} MiB target")


if __name__ == "__main__":
    main()
