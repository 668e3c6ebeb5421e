"""GPU inference: a full tile end to end to Zarr, and KappaMask's batch size and precision.

The real L1C scene (T33UUU, 768 x 1536 px at 10 m) is mirrored to a ``--size`` square tile and
written as COGs, band by band at its native resolution (``bench_read_levels.encoded_scene``,
the L2A layout Earth Search serves; all 13 bands, for KappaMask). Then, each in a fresh
process (after an untimed warm-up that loads the model):

1. **Network sweep** (KappaMask L1C, the published U-Net size: 31 M weights): ``predict_proba``
   alone on tiles of the model's 512² px cut from the scene, for each batch size and precision
   (``float32``, ``float16``, ``bfloat16``: :func:`torch.autocast` around the forward). The
   network's Mpx/s and the class agreement with float32 at the same batch size. The chosen
   configuration is the fastest with agreement >= 99.5 %.
2. **End to end to Zarr**: ``xcloud.load`` of the COG tile, ``xcloud.predict`` and
   ``xcloud.to_zarr``, Dask's threaded scheduler: ukis-6b-l1c (float32: its graph runs as
   shipped) and KappaMask in float32 and in the chosen configuration. Wall time (target
   < 10 s for the full 10980² tile on a GPU) and the tile's Mpx/s; the network's Mpx/s at the
   same batch and precision (from the sweep; for ukis measured the same way).

KappaMask's published weights are not fetched here: the network has **random weights**
(seeded, the classifier scaled 4x so that classes are not near ties, as a trained head's are
not), so its speed is the published network's and its agreement figures are only a proxy
for the trained network's.

Where no CUDA device is present the same rows run on the CPU at a small size (``--size``
2048 by default, 512 with ``--quick``), with ``bfloat16`` as the only reduced precision
(float16 needs CUDA).

    python benchmarks/bench_gpu.py                    # CUDA: 10980² tile; CPU: 2048²
    python benchmarks/bench_gpu.py --quick            # CUDA: 2048²; CPU: 512², fewer rows
    python benchmarks/bench_gpu.py --workdir /data/tiles   # keep the encoded tile
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import _common
import bench_read_levels
import numpy as np

UKIS, KAPPAMASK = "ukis-6b-l1c", "kappamask-l1c"
CUDA_SIZE, CUDA_QUICK_SIZE, CPU_SIZE, CPU_QUICK_SIZE = 10980, 2048, 2048, 512
CUDA_CHUNK, CPU_CHUNK = 2048, 1024
AGREEMENT = 0.995
WARM_UP = 512
SWEEP = {  # (batch sizes, precisions, tiles in the sweep, tile px) by device and --quick
    ("cuda", False): ((1, 2, 4, 8, 16), ("float32", "float16", "bfloat16"), 64, 512),
    ("cuda", True): ((4, 16), ("float32", "float16", "bfloat16"), 16, 512),
    ("cpu", False): ((1, 4), ("float32", "bfloat16"), 8, 512),
    ("cpu", True): ((2,), ("float32", "bfloat16"), 4, 256),
}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- the tile and the weights -----------------------------------------------------------------


def cog_tile(size: int, folder: Path) -> Path:
    """The ``size``² COG tile with every band KappaMask L1C takes (``encoded_scene`` encodes
    every GeoTIFF in ``folder / "tif"``: those of ukis' bands and these)."""
    import xcloud

    bands = sorted(set(xcloud.models.get(KAPPAMASK).info.bands) | set(bench_read_levels.BANDS))
    _common.scene_files(size, bands, folder / "tif")
    return bench_read_levels.encoded_scene(size, "cog", folder)


def random_kappamask(path: Path) -> Path:
    """A KappaMask L1C checkpoint of the published size with random weights (seeded)."""
    import torch

    from xcloud.models.kappamask import (
        KAPPAMASK_L1C_BANDS,
        KappaMaskUNet,
        default_range,
        save_checkpoint,
    )

    torch.manual_seed(0)
    network = KappaMaskUNet(len(KAPPAMASK_L1C_BANDS))
    with torch.no_grad():  # a decisive head: a random one leaves classes near ties
        network.classifier.weight.mul_(4.0)
        network.classifier.bias.mul_(4.0)
    save_checkpoint(path, network, bands=KAPPAMASK_L1C_BANDS, minimum=[0.0] * 13,
                    maximum=default_range("L1C")[1], level="L1C")
    return path


def _weights(model: str, kappamask: str) -> str | None:
    return kappamask if model == KAPPAMASK else None


# -- measuring in a child process -------------------------------------------------------------


def run_network(model: str, weights: str | None, precision: str, batch: int, tiles: int,
                tile: int, out: str) -> dict[str, Any]:
    """The model's ``predict_proba`` alone on ``tiles`` tiles of ``tile``² px of the real
    scene, ``batch`` at a time (after a warm-up batch); the classes saved to ``out``."""
    import xcloud

    device = _device()
    model_ = xcloud.models.load(model, weights=weights, device=device, precision=precision)
    side = tile * int(np.ceil(np.sqrt(tiles)))
    image = _common.real_scene_numpy(side, model_.info.bands).transpose(2, 0, 1)
    grid = side // tile
    cut = image.reshape(len(image), grid, tile, grid, tile).transpose(1, 3, 0, 2, 4)
    inputs = model_.info.normalization.apply(cut.reshape(-1, len(image), tile, tile)[:tiles])
    model_.predict_proba(inputs[:batch])  # warm-up: kernels chosen, memory pooled
    classes = []
    with _common.stopwatch() as meter:
        for start in range(0, tiles, batch):  # numpy out: synchronised with the device
            classes.append(model_.predict_proba(inputs[start:start + batch]).argmax(1))
    np.save(out, np.concatenate(classes).astype(np.uint8))
    return {**meter.as_dict(), "mpx": tiles * tile * tile / 1e6}


def run_tile(folder: str, model: str, weights: str | None, precision: str, batch: int,
             chunk: int, threads: int, store: str) -> dict[str, Any]:
    """The tile end to end: ``xcloud.load``, ``xcloud.predict``, ``xcloud.to_zarr``."""
    import dask

    import xcloud
    from xcloud.data.load import load
    from xcloud.data.sample import scene_item

    bands = list(xcloud.models.get(model).info.bands)
    data = load([scene_item(folder)], bands=bands, chunks=chunk)
    options = {"model": model, "weights": weights, "device": _device(), "precision": precision,
               "batch_size": batch}
    with dask.config.set(scheduler="threads", num_workers=threads):
        crop = data.isel(y=slice(0, WARM_UP), x=slice(0, WARM_UP))
        xcloud.predict(crop, **options).compute()  # the model loaded, kernels compiled
        with _common.stopwatch() as meter:
            summary = xcloud.to_zarr(xcloud.predict(data, **options), store)
    pixels = data.sizes["y"] * data.sizes["x"]
    return {**meter.as_dict(), "mpx": pixels / 1e6, "chunks": summary.chunks_written}


# -- the tables -------------------------------------------------------------------------------


def _rate(result: dict[str, Any]) -> str:
    """Mpx/s of a child's result, three significant digits."""
    return f"{result['mpx'] / result['seconds']:.3g}"


def sweep_table(args: argparse.Namespace, device: str, kappamask: Path,
                tmp: Path) -> tuple[int, str, dict[tuple[int, str], dict[str, Any]]]:
    """Table 1: KappaMask's network per batch size and precision; the chosen configuration."""
    batches, precisions, tiles, tile = SWEEP[device, args.quick]
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for batch in batches:
        for precision in precisions:
            _common.progress(f"network: {KAPPAMASK}, batch {batch}, {precision}")
            out = tmp / f"sweep-{batch}-{precision}.npy"
            result = _common.run_child(Path(__file__), "run_network", model=KAPPAMASK,
                                       weights=str(kappamask), precision=precision,
                                       batch=batch, tiles=tiles, tile=tile, out=str(out))
            reference = np.load(tmp / f"sweep-{batch}-float32.npy")
            results[batch, precision] = {**result, "agreement": float(np.mean(
                np.load(out) == reference))}
    fine = {key: r for key, r in results.items() if r["agreement"] >= AGREEMENT}
    batch, precision = max(fine, key=lambda key: fine[key]["mpx"] / fine[key]["seconds"])
    rows = [[batch_, precision_, f"{r['seconds']:.2f}", _rate(r),
             f"{100 * r['agreement']:.2f} %",
             "chosen" if (batch_, precision_) == (batch, precision) else "",
             _common.Meter.from_dict(r).noise] for (batch_, precision_), r in results.items()]
    _common.print_table(["batch", "precision", "s", "network Mpx/s", "classes = float32",
                         "choice", _common.NOISE_HEADER], rows,
                        title=f"{KAPPAMASK} network alone ({device}): {tiles} tiles of "
                        f"{tile}² px, random weights")
    print(f"\nchosen: batch_size={batch}, precision={precision!r} (the fastest with classes "
          f"= float32 on >= {100 * AGREEMENT:.1f} % of the pixels)")
    return batch, precision, results


def tile_table(args: argparse.Namespace, device: str, folder: Path, kappamask: Path,
               tmp: Path, chosen: tuple[int, str],
               network: dict[tuple[int, str], dict[str, Any]]) -> None:
    """Table 2: the tile end to end to Zarr, ukis and KappaMask; the network's Mpx/s."""
    batch, precision = chosen
    _, _, tiles, tile = SWEEP[device, args.quick]
    plan = [(UKIS, "float32", batch), (KAPPAMASK, "float32", batch)]
    plan += [] if precision == "float32" else [(KAPPAMASK, precision, batch)]
    rows = []
    for model, precision_, batch_ in plan:
        if model == KAPPAMASK:
            net = network[batch_, precision_]
        else:
            _common.progress(f"network: {model}, batch {batch_}")
            net = _common.run_child(Path(__file__), "run_network", model=model, weights=None,
                                    precision=precision_, batch=batch_, tiles=tiles,
                                    tile=tile, out=str(tmp / f"{model}.npy"))
        _common.progress(f"tile to Zarr: {model}, batch {batch_}, {precision_}")
        result = _common.run_child(
            Path(__file__), "run_tile", folder=str(folder), model=model,
            weights=_weights(model, str(kappamask)), precision=precision_, batch=batch_,
            chunk=args.chunk, threads=args.threads,
            store=str(tmp / f"{model}-{precision_}.zarr"))
        target = "< 10 s" if args.size == CUDA_SIZE and device == "cuda" else "-"
        rows.append([model, precision_, batch_, f"{result['seconds']:.1f}", target,
                     _rate(result), _rate(net), f"{result['peak_mib']:.0f}",
                     _common.Meter.from_dict(result).noise])
    _common.print_table(["model", "precision", "batch", "wall s", "target", "tile Mpx/s",
                         "network Mpx/s", "peak MiB", _common.NOISE_HEADER], rows,
                        title=f"{args.size}² COG tile to Zarr ({device}, chunk {args.chunk}, "
                        f"{args.threads} Dask threads)")


OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--size", int, f"tile size (CUDA: {CUDA_SIZE}, {CUDA_QUICK_SIZE} with --quick; CPU: "
     f"{CPU_SIZE}, {CPU_QUICK_SIZE})"),
    ("--chunk", int, f"chunk in px (default {CUDA_CHUNK} on CUDA, {CPU_CHUNK} on the CPU)"),
    ("--threads", int, "Dask threads (default: 8 on CUDA, each with its batch on the device; "
     "all cores on the CPU)"),
    ("--workdir", Path, "where the encoded tile is written and kept between runs (default: a "
     "temporary folder, removed at the end)"),
)
"""The script's own options (besides ``--quick`` and ``--data``); all default to None."""

CHILD_CALLS = {"run_network": run_network, "run_tile": run_tile}
"""What a child process started by :func:`_common.run_child` may be asked to run."""


def main() -> None:
    if _common.serve_child(CHILD_CALLS):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(parser)
    for flag, kind, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=text)
    args = parser.parse_args()
    _common.use_data(args.data)
    device = _device()
    cuda = device == "cuda"
    args.size = args.size or {(True, False): CUDA_SIZE, (True, True): CUDA_QUICK_SIZE,
                              (False, False): CPU_SIZE, (False, True): CPU_QUICK_SIZE}[
                                  cuda, args.quick]
    args.chunk = min(args.chunk or (CUDA_CHUNK if cuda else CPU_CHUNK), args.size)
    args.threads = args.threads or (8 if cuda else os.cpu_count() or 1)
    _common.print_header("GPU inference: batch size, precision, a tile to Zarr (bench_gpu.py)",
                         size=f"{args.size}²", chunk=args.chunk, threads=args.threads)
    if not cuda:
        print("No CUDA device: measured on the CPU (bfloat16 is the only reduced precision "
              "there).")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        work = args.workdir or tmp
        _common.progress(f"encoding the {args.size}² tile as COG")
        folder = cog_tile(args.size, work / f"cog13-{args.size}")
        kappamask = random_kappamask(tmp / "kappamask-random.pt")
        batch, precision, network = sweep_table(args, device, kappamask, tmp)
        tile_table(args, device, folder, kappamask, tmp, (batch, precision), network)


if __name__ == "__main__":
    main()
