"""xcloud: cloud and cloud-shadow masks for satellite imagery at any scale.

Importing xcloud registers the ``.cloudmask`` accessor on xarray objects::

    import xcloud
    mask = ds.cloudmask.predict(model="ukis-6b-l1c")
"""

from __future__ import annotations

from . import accessor as _accessor  # noqa: F401  (registers .cloudmask)
from . import errors, models
from ._version import __version__
from .engine import load_counts, local_cluster, predict

__all__ = ["__version__", "errors", "load_counts", "local_cluster", "models", "predict"]
