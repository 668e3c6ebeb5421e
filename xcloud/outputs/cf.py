"""CF-convention attributes for masks and probabilities."""

from __future__ import annotations

from ..models.protocol import ModelInfo

__all__ = ["mask_attrs", "probability_attrs"]


def _provenance(info: ModelInfo) -> dict[str, object]:
    from .. import __version__

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
