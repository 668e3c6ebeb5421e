"""Class schemes: values, names, CF flag attributes and colours of a mask."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["S2CLOUDLESS_SCHEME", "UKIS_SCHEME", "ClassScheme", "CloudClass"]


@dataclass(frozen=True)
class CloudClass:
    """One class of a mask: its value in the mask, CF name, human description and colour."""

    value: int
    name: str
    description: str
    color: str


@dataclass(frozen=True)
class ClassScheme:
    """The classes a model predicts plus the value written where there is no data.

    ``classes`` are in the order of the model's probability channels.
    """

    name: str
    classes: tuple[CloudClass, ...]
    nodata: CloudClass

    @property
    def values(self) -> tuple[int, ...]:
        """Mask values of the predicted classes, in channel order."""
        return tuple(c.value for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the predicted classes, in channel order."""
        return tuple(c.name for c in self.classes)

    def all_classes(self) -> tuple[CloudClass, ...]:
        """Predicted classes followed by the no-data class, sorted by value."""
        return tuple(sorted((*self.classes, self.nodata), key=lambda c: c.value))

    def cf_attrs(self) -> dict[str, object]:
        """CF-1.10 flag attributes (``flag_values``, ``flag_meanings``) plus colours."""
        classes = self.all_classes()
        return {
            "flag_values": [c.value for c in classes],
            "flag_meanings": " ".join(c.name for c in classes),
            "flag_colors": " ".join(c.color for c in classes),
            "class_scheme": self.name,
            "nodata": self.nodata.value,
        }


NO_DATA = CloudClass(255, "no_data", "no valid input data", "#000000")

UKIS_SCHEME = ClassScheme(
    name="ukis-csmask",
    classes=(
        CloudClass(0, "clear", "clear surface", "#4daf4a"),
        CloudClass(1, "cloud", "cloud", "#ffffff"),
        CloudClass(2, "cloud_shadow", "cloud shadow", "#555555"),
    ),
    nodata=NO_DATA,
)

S2CLOUDLESS_SCHEME = ClassScheme(
    name="s2cloudless",
    classes=(
        CloudClass(0, "clear", "clear sky", "#4daf4a"),
        CloudClass(1, "cloud", "cloud", "#ffffff"),
    ),
    nodata=NO_DATA,
)
