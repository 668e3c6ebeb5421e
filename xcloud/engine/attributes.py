"""Names and CF-convention attributes of what :func:`xcloud.predict` returns.

The outputs (Zarr stores, STAC items, plots) read these; they live with the engine that makes
the masks, so that nothing here imports a layer above.
"""

from __future__ import annotations

from .._version import __version__
from ..models.protocol import ModelInfo

__all__ = ["MASK_VARIABLE", "MASK_VARIABLE_NAMES", "PROBABILITY_VARIABLE", "mask_attrs",
           "probability_attrs"]

MASK_VARIABLE = "cloud_mask"
"""Name of the masks :func:`xcloud.predict` returns and of the variable in Zarr stores: not
``cloudmask``, the accessor's name, so that ``xr.open_zarr(store).cloud_mask`` is the mask."""

MASK_VARIABLE_NAMES = (MASK_VARIABLE, "cloudmask")
"""The mask's name now and in stores written before 0.2 (read and appended to alike)."""

PROBABILITY_VARIABLE = "cloud_probability"
"""Name of the class probabilities :func:`xcloud.predict` returns (``output="proba"``)."""


def _provenance(info: ModelInfo) -> dict[str, object]:
    return {
        "model": info.name,
        "model_version": info.version,
        "model_resolution_m": info.resolution,
        "xcloud_version": __version__,
    }


def mask_attrs(info: ModelInfo) -> dict[str, object]:
    """``flag_values``/``flag_meanings``/colours, long name and provenance of a class mask."""
    return {
        "long_name": f"cloud mask ({info.scheme.name} classes)",
        **info.scheme.cf_attrs(),
        **_provenance(info),
    }


def probability_attrs(info: ModelInfo) -> dict[str, object]:
    """Attributes of per-class probabilities (NaN where there is no data)."""
    return {
        "long_name": f"class probability ({info.scheme.name} classes)",
        "units": "1",
        "valid_range": [0.0, 1.0],
        "class_names": " ".join(info.scheme.names),
        **_provenance(info),
    }
