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

    print(f"{'name':<14} {'level':<5} {'res':>4}  {'classes':<28} bands")
    for name in models.list():
        info = models.get(name).info
        classes = ",".join(info.scheme.names)
        print(f"{name:<14} {info.level:<5} {info.resolution:>3.0f}m  {classes:<28} "
              f"{' '.join(info.bands)}")
        if args.verbose:
            print(f"    weights: {info.weights_source}; licence: {info.licence}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .engine.predict import predict
    from .synthetic import synthetic_scene

    scene = synthetic_scene(args.size, seed=args.seed).chunk({"y": args.chunk, "x": args.chunk})
    start = time.perf_counter()
    mask = predict(scene, model=args.model, device=args.device).compute()
    seconds = time.perf_counter() - start
    meanings = mask.attrs["flag_meanings"].split()
    values, counts = np.unique(mask.values, return_counts=True)
    lookup = dict(zip(mask.attrs["flag_values"], meanings, strict=True))
    print(f"{args.model} on a generated {args.size} x {args.size} px scene: {seconds:.1f} s "
          f"({args.size**2 / seconds / 1e6:.2f} Mpx/s)")
    for value, count in zip(values, counts, strict=True):
        print(f"  {lookup[int(value)]:<14} {100 * count / mask.size:6.2f} %")
    if args.output:
        mask.to_netcdf(args.output)
        print(f"mask written to {args.output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xcloud", description="Cloud and shadow masks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("-v", "--verbose", action="store_true", help="show weights and licence")
    models.set_defaults(run=_models)
    demo = commands.add_parser("demo", help="mask a generated scene and print class fractions")
    demo.add_argument("--model", default="ukis-6b-l1c", help="registry name (default %(default)s)")
    demo.add_argument("--size", type=int, default=1536, help="scene size in pixels")
    demo.add_argument("--chunk", type=int, default=768, help="chunk size in pixels")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the scene")
    demo.add_argument("--device", default="auto", help="cpu, cuda or auto")
    demo.add_argument("--output", help="write the mask to this NetCDF file")
    demo.set_defaults(run=_demo)
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
