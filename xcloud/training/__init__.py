"""Training and evaluation data: the KappaSet reader, samples for torch, generated tiles.

Names are imported on first use: ``import xcloud.training`` imports none of its modules, and
the KappaSet reader needs torch only for tensors.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CM_VSM_SCALE",
    "COMPARISON_MASKS",
    "DN_THRESHOLD",
    "KAPPASET_L1C_FEATURES",
    "KAPPASET_L2A_FEATURES",
    "KAPPASET_LABELS",
    "TILE_SIZE",
    "UNDEFINED",
    "KappaSetDataset",
    "KappaSetTile",
    "PartialLabelDataset",
    "PartialScheme",
    "TrainResult",
    "ambiguous_cross_entropy",
    "ambiguous_mse",
    "find_tiles",
    "mosaic",
    "read_tile",
    "synthetic_kappaset",
    "to_multi_hot",
    "train",
    "train_partial",
    "write_tile",
]

# Public name -> module of this package that defines it.
_EXPORTS: dict[str, str] = {**dict.fromkeys(__all__, "kappaset"), "train": "train",
                            "TrainResult": "train", "PartialLabelDataset": "partial",
                            "PartialScheme": "partial", "train_partial": "partial",
                            "to_multi_hot": "partial",
                            "ambiguous_cross_entropy": "losses", "ambiguous_mse": "losses"}


def __getattr__(name: str) -> Any:
    """The public ``name``, imported from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names and the public ones not imported yet."""
    return sorted({*globals(), *__all__})
