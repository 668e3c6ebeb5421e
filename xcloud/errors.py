"""Exceptions and warnings raised by xcloud.

Every error xcloud raises on purpose derives from :class:`XcloudError`, and every message says
what the user can do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AssetReadError",
    "AssetReadWarning",
    "BandError",
    "ChunkSizeError",
    "CrsError",
    "DatasetError",
    "GridError",
    "InputDtypeError",
    "InvalidPixelsWarning",
    "InvalidReflectanceError",
    "LeaseLostError",
    "MissingBandError",
    "MissingWeightsError",
    "ModelOutputError",
    "NoItemsError",
    "OptionalDependencyError",
    "ProcessingLevelError",
    "ProcessingLevelWarning",
    "RadiometryError",
    "StacError",
    "StoreLockedError",
    "StoreWriteError",
    "UnknownModelError",
    "WeightsError",
    "XcloudError",
    "XcloudWarning",
    "ZarrStoreError",
]


class XcloudError(Exception):
    """Base class of all xcloud errors."""


class BandError(XcloudError, ValueError):
    """The input bands cannot be matched to what the model needs."""


class MissingBandError(BandError, KeyError):
    """A band that the model needs is not in the input."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputDtypeError(XcloudError, TypeError):
    """The input has a dtype that cannot be used as reflectance."""


class InvalidReflectanceError(XcloudError, ValueError):
    """The input holds values that are not physical reflectances (inf, NaN in some bands, DN)."""


class UnknownModelError(XcloudError, KeyError):
    """No model of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WeightsError(XcloudError, ValueError):
    """A weights file is corrupt, does not match its checksum or does not fit the model."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """The model needs a weights file that is not available."""


class ChunkSizeError(XcloudError, ValueError):
    """The chunking of the input cannot be processed as it is."""


class OptionalDependencyError(XcloudError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class StacError(XcloudError, RuntimeError):
    """A STAC catalogue or API could not be searched or its items could not be used."""


class NoItemsError(StacError, LookupError):
    """A search or a load got no items."""


class RadiometryError(XcloudError, ValueError):
    """Digital numbers cannot be turned into reflectance with the metadata at hand."""


class ZarrStoreError(XcloudError, ValueError):
    """A Zarr store cannot take this write (other data in it, another format, another job
    writing it)."""


class StoreWriteError(ZarrStoreError, OSError):
    """An object of a store could not be written after the store client's retries.

    The message names the object (the chunk's region and array, or the key) and the store.
    """


class StoreLockedError(ZarrStoreError):
    """Another write holds the store's lease; the message names the store, holder and expiry.

    Attributes
    ----------
    store, holder, expires
        The store URL, the holder's description and its expiry (UTC).
    """

    def __init__(self, store: str, holder: dict[str, Any]) -> None:
        self.store = store
        self.holder = holder
        self.expires = holder.get("expires")
        super().__init__(
            f"{store} is being written by another job (holder {holder.get('holder')} on host "
            f"{holder.get('host')}, pid {holder.get('pid')}, since {holder.get('created')}); "
            f"its lease expires at {self.expires} unless renewed. Wait for it to finish, or "
            "write to another store. A crashed job's lease is taken over once it expires."
        )


class LeaseLostError(ZarrStoreError):
    """The write's lease on the store expired and was taken over by another job."""


class DatasetError(XcloudError, ValueError):
    """Training or evaluation data are not in the expected layout (variables, shapes, labels)."""


class GridError(BandError):
    """The input bands are not on one pixel grid (other dimensions, sizes or coordinates)."""


class CrsError(XcloudError, ValueError):
    """An output needs a coordinate reference system and the data do not carry one."""


class AssetReadError(StacError, OSError):
    """An asset file of a STAC item cannot be read (missing, corrupt or truncated)."""


class ProcessingLevelError(XcloudError, ValueError):
    """With ``strict=True``: the data's processing level is not the model's."""


class ModelOutputError(XcloudError, ValueError):
    """The model's output is not usable (e.g. not finite for many pixels of a chunk)."""


class XcloudWarning(UserWarning):
    """Base class of xcloud's warnings."""


class ProcessingLevelWarning(XcloudWarning):
    """The data's processing level (L1C/L2A) is not the one the model was trained on."""


class InvalidPixelsWarning(XcloudWarning):
    """Pixels that cannot be valid (NaN in some bands, impossible values, a non-finite model
    output) were marked no data."""


class AssetReadWarning(XcloudWarning):
    """An asset could not be read; its pixels were marked no data (``strict=False``)."""
