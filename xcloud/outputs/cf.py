"""CF-convention attributes for masks and probabilities (made by the engine with the masks:
:mod:`xcloud.engine.attributes`; here for the outputs that write them)."""

from __future__ import annotations

from ..engine.attributes import mask_attrs, probability_attrs

__all__ = ["mask_attrs", "probability_attrs"]
