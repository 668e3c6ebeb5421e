"""The ``xcloud train`` subcommand."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_train_command"]


def _run(args: argparse.Namespace) -> int:
    """Train as the parsed ``args`` say and print the summary; the exit status (0)."""
    from .train import summarize, train

    result = train(
        args.data, checkpoint=args.out, level=args.level, depth=args.depth,
        filters=args.filters, head_channels=args.head_channels, epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate, loss=args.loss, val_fraction=args.val_fraction,
        patience=args.patience, augment=not args.no_augment, resume=args.resume,
        scale=args.scale,
        device=args.device, seed=args.seed, progress=not args.quiet,
    )
    if result.stopped_early:
        print(f"stopped early after epoch {result.history[-1]['epoch']} "
              f"(no lower validation loss for {args.patience} epochs)")
    for line in summarize(result):
        print(line)
    return 0


def add_train_command(commands: Any) -> None:
    """Register ``xcloud train`` on an argparse sub-parser collection.

    Parameters
    ----------
    commands
        What ``argparse.ArgumentParser.add_subparsers`` returned.
    """
    parser = commands.add_parser(
        "train", help="train a KappaMask U-Net on KappaSet-format NetCDF tiles",
        description="Train KappaMask (dice loss, Adam, learning rate reduced on plateau, early "
        "stopping, 80/20 split) on tiles laid out as <month>/<product>/tile_X_Y.nc; the best "
        "checkpoint keeps its bands and min/max normalisation and loads with "
        "predict(model='kappamask-l1c', weights=CHECKPOINT).")
    parser.add_argument("--data", required=True, help="root folder of the NetCDF tiles")
    parser.add_argument("--out", default="kappamask.safetensors", help="checkpoint to write")
    parser.add_argument("--level", default="L1C", choices=("L1C", "L2A"))
    parser.add_argument("--depth", type=int, default=5, help="U-Net levels (5, 6, 7)")
    parser.add_argument("--filters", type=int, default=64, help="first level's filters")
    parser.add_argument("--head-channels", type=int, default=2,
                        help="the published 2-channel layer before the classifier (0: none)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--loss", default="dice", choices=("dice", "ce"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--patience", type=int, default=10, help="early-stopping patience")
    parser.add_argument("--scale", type=float,
                        help="band values to reflectance factor (6.5535 for DN/65535 files)")
    parser.add_argument("--no-augment", action="store_true", help="no random flips/rotations")
    parser.add_argument("--resume", action="store_true", help="continue from <out>.state.pt")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=_run)
