"""``xcloud evaluate``: score the registered models on a labelled patch and print the tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import BandError, DatasetError
from .evaluate import Comparison, evaluate_models, feature_importance
from .schemes import LEVELS, get_scheme, scheme_names

__all__ = ["DEFAULT_BANDS", "add_evaluate_command", "load_npz"]

DEFAULT_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")


def _channels_first(image: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] == len(bands):
        return image.transpose(2, 0, 1)
    if image.ndim == 3 and image.shape[0] == len(bands):
        return image
    raise BandError(f"image of shape {image.shape} has no axis of {len(bands)} bands "
                    f"({' '.join(bands)}); pass --bands with one name per band")


def load_npz(path: str | Path, *, image_key: str = "img", label_key: str = "msk",
             bands: Sequence[str] = DEFAULT_BANDS) -> tuple[xr.DataArray, np.ndarray]:
    """A labelled patch from an ``.npz``: (band, y, x) reflectance and (y, x) labels.

    The image may be (y, x, band) or (band, y, x); labels (y, x) or with a length-1 axis.
    """
    with np.load(path) as data:
        missing = [key for key in (image_key, label_key) if key not in data.files]
        if missing:
            raise DatasetError(f"{path} has no array {', '.join(missing)}; it holds "
                                  f"{', '.join(data.files)}")
        image = _channels_first(data[image_key], bands)
        labels = data[label_key]
    if labels.size != image[0].size:
        raise DatasetError(f"labels of shape {labels.shape} do not fit the image of shape "
                              f"{image.shape[1:]}")
    array = xr.DataArray(image, dims=("band", "y", "x"), coords={"band": list(bands)})
    return array, labels.reshape(image.shape[1:])


def _print_importance(comparison: Comparison, image: xr.DataArray, labels: np.ndarray,
                      args: argparse.Namespace) -> None:
    for evaluation in comparison.evaluations:
        result = feature_importance(evaluation.model, image, labels,
                                    label_scheme=args.label_scheme, level=evaluation.level,
                                    resolution=args.resolution, device=args.device)
        print(f"\n{result.table()}")


def _run(args: argparse.Namespace) -> int:
    image, labels = load_npz(args.npz, image_key=args.image_key, label_key=args.label_key,
                             bands=args.bands)
    scheme = get_scheme(args.label_scheme)
    print(f"{args.npz}: {image.sizes['y']} x {image.sizes['x']} px, bands "
          f"{' '.join(args.bands)}, {args.resolution:g} m; labels {scheme.name} "
          f"({scheme.describe()})\n")
    comparison = evaluate_models(image, labels, label_scheme=scheme, models=args.models,
                                 level=args.level, data_level=args.data_level,
                                 resolution=args.resolution, device=args.device)
    print(comparison.table())
    if args.importance:
        _print_importance(comparison, image, labels, args)
    if args.json:
        Path(args.json).write_text(json.dumps(comparison.to_dict(), indent=2))
        print(f"\nresults: {args.json}")
    return 0 if comparison.evaluations else 1


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` subcommand on ``subparsers`` (of the ``xcloud`` parser)."""
    parser = subparsers.add_parser(
        "evaluate", help="score the registered models against labelled data",
        description="Mask a labelled patch with every registered model that can run on its "
        "bands and print per-class dice, precision, recall, overall accuracy, the confusion "
        "matrix and cloud / invalid super-class scores, at the finest class level that the "
        "model and the labels share.")
    parser.add_argument("--npz", required=True, help="labelled patch (.npz)")
    parser.add_argument("--image-key", default="img", help="image array (default %(default)s)")
    parser.add_argument("--label-key", default="msk", help="label array (default %(default)s)")
    parser.add_argument("--bands", nargs="+", default=list(DEFAULT_BANDS),
                        help="band names in the image's order (default %(default)s)")
    parser.add_argument("--label-scheme", default="ukis-csmask-testfile",
                        choices=scheme_names(), help="classes of the labels (default %(default)s)")
    parser.add_argument("--resolution", type=float, default=30.0,
                        help="pixel size of the patch in m (default %(default)s)")
    parser.add_argument("--models", nargs="+", help="registry names (default: all)")
    parser.add_argument("--level", choices=list(LEVELS),
                        help="class level (default: the finest the model and labels share)")
    parser.add_argument("--data-level", type=str.upper, choices=("L1C", "L2A"),
                        help="processing level of the patch; other models are marked")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--importance", action="store_true",
                        help="also print feature importance (1 - dice with each band filled)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.set_defaults(run=_run)
