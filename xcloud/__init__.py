"""xcloud: cloud and cloud-shadow masks for satellite imagery at any scale.

Importing xcloud registers the ``.cloudmask`` accessor on xarray objects::

    import xcloud

    items = xcloud.search("https://earth-search.aws.element84.com/v1",
                          collections=["sentinel-2-l1c"], bbox=bbox, datetime="2024-06")
    data = xcloud.load(items, chunks=1024)              # lazy reflectance (time, y, x)
    mask = data.cloudmask.predict(model="ukis-6b-l1c")  # lazy uint8 classes
    mask.cloudmask.to_zarr("masks.zarr")                # chunk by chunk, resumable
"""

from __future__ import annotations

from . import accessor as _accessor  # noqa: F401  (registers .cloudmask)
from . import errors, models
from ._version import __version__
from .data.load import load
from .data.search import search
from .engine import load_counts, local_cluster, predict
from .outputs.stac import write_item
from .outputs.zarr import open_mask, to_zarr
from .pipeline import mask_items
from .training.train import train  # imports torch on the first call only

__all__ = [
    "__version__",
    "errors",
    "load",
    "load_counts",
    "local_cluster",
    "mask_items",
    "models",
    "open_mask",
    "predict",
    "search",
    "to_zarr",
    "train",
    "write_item",
]
