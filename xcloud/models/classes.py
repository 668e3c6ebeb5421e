"""Class schemes: values, names, CF flag attributes and colours of a mask."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KAPPAMASK_SCHEME", "S2CLOUDLESS_SCHEME", "UKIS_SCHEME", "ClassScheme", "CloudClass"]


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

    ``classes`` are in the order of the model's probability channels. ``nodata`` may also be
    one of them (same value and name): a network with a channel of its own for missing data,
    as KappaMask's MISSING or SEnSeI-v2's no-data channel, keeps that channel in its
    probabilities, and pixels it classifies there read as no data.
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

    def __post_init__(self) -> None:
        values = [c.value for c in self.classes]
        if len(set(values)) != len(values):
            raise ValueError(f"class scheme {self.name!r}: repeated values {values}")
        same = [c for c in self.classes if c.value == self.nodata.value]
        if same and same[0].name != self.nodata.name:
            raise ValueError(f"class scheme {self.name!r}: no-data value {self.nodata.value} "
                             f"is class {same[0].name!r}, not {self.nodata.name!r}")

    def all_classes(self) -> tuple[CloudClass, ...]:
        """Every class once, the no-data class included, sorted by value."""
        by_value = {c.value: c for c in (self.nodata, *self.classes)}
        return tuple(sorted(by_value.values(), key=lambda c: c.value))

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

KAPPAMASK_SCHEME = ClassScheme(
    name="kappamask",
    classes=(
        CloudClass(1, "clear", "clear surface", "#4daf4a"),
        CloudClass(2, "cloud_shadow", "cloud shadow", "#555555"),
        CloudClass(3, "semi_transparent_cloud", "semi-transparent (thin) cloud", "#a6cee3"),
        CloudClass(4, "cloud", "cloud", "#ffffff"),
    ),
    nodata=CloudClass(0, "missing", "no valid input data (KappaMask's MISSING)", "#000000"),
)
"""KappaMask's own codes: 0 MISSING is the no-data value, so masks read as KappaMask's products.

The network's output channel ``k`` is class value ``k``; its MISSING channel (and the
UNDEFINED channel 5 of networks that have one) are not predicted classes: no-data pixels are
found from the input, as for every xcloud model.
"""

SENSEI_V2_SCHEME = ClassScheme(
    name="sensei-v2",
    classes=(
        CloudClass(0, "land", "clear land", "#4daf4a"),
        CloudClass(1, "water", "clear water", "#377eb8"),
        CloudClass(2, "snow", "snow and ice", "#e0f3f8"),
        CloudClass(3, "thin_cloud", "thin (semi-transparent) cloud", "#a6cee3"),
        CloudClass(4, "thick_cloud", "thick cloud", "#ffffff"),
        CloudClass(5, "cloud_shadow", "cloud shadow", "#555555"),
    ),
    nodata=CloudClass(6, "no_data", "no valid input data (SEnSeI-v2's no-data class)",
                      "#000000"),
)
"""SEnSeI-v2's 7 classes (Francis 2024) with its own codes: 6 NO DATA is the no-data value.

The network's output channel ``k`` is class value ``k``; its no-data channel 6 is not a
predicted class: no-data pixels are found from the input, as for every xcloud model. Masks
read as the ``sensei-v2`` label scheme of :mod:`xcloud.evaluation.schemes`.
"""

__all__.append("SENSEI_V2_SCHEME")
