"""Class schemes: values, names, CF flag attributes and colours of a mask."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLOUDSEN12_SCHEME",
    "KAPPAMASK_SCHEME",
    "NO_DATA",
    "S2CLOUDLESS_SCHEME",
    "SENSEI_V2_4CLASS_SCHEME",
    "SENSEI_V2_SCHEME",
    "UKIS_SCHEME",
    "ClassScheme",
    "CloudClass",
]


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



def _clear_thick_thin_shadow(clear: str, thick: str) -> tuple[CloudClass, ...]:
    """0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow (CloudSEN12's labels, and the
    4-class SEnSeI-v2 output), with these descriptions of the first two."""
    return (CloudClass(0, "clear", clear, "#4daf4a"),
            CloudClass(1, "thick_cloud", thick, "#ffffff"),
            CloudClass(2, "thin_cloud", "thin (semi-transparent) cloud", "#a6cee3"),
            CloudClass(3, "cloud_shadow", "cloud shadow", "#555555"))


CLOUDSEN12_SCHEME = ClassScheme(
    name="cloudsen12",
    classes=_clear_thick_thin_shadow("clear surface", "thick (opaque) cloud"),
    nodata=NO_DATA,
)
"""CloudSEN12's label values; output channel ``k`` is value ``k``."""

_KAPPAMASK_MISSING = CloudClass(5, "missing", "missing or invalid input (KappaMask's MISSING)",
                               "#000000")

KAPPAMASK_SCHEME = ClassScheme(
    name="kappamask-km-predict",
    classes=(
        CloudClass(0, "undefined", "undefined (KappaMask's UNDEFINED)", "#ff00ff"),
        CloudClass(1, "clear", "clear surface", "#4daf4a"),
        CloudClass(2, "cloud_shadow", "cloud shadow", "#555555"),
        CloudClass(3, "semi_transparent_cloud", "semi-transparent (thin) cloud", "#a6cee3"),
        CloudClass(4, "cloud", "cloud", "#ffffff"),
        _KAPPAMASK_MISSING,
    ),
    nodata=_KAPPAMASK_MISSING,
)
"""The six output channels of the published KappaMask networks, in their order, coded as
km_predict's products: mask value = channel index.

Channels (km_predict's ``classes``): 0 UNDEFINED, 1 CLEAR, 2 CLOUD_SHADOW,
3 SEMI_TRANSPARENT_CLOUD, 4 CLOUD, 5 MISSING. km_predict's GeoTIFF (its README's table) codes
CLEAR 1, CLOUD_SHADOW 2, SEMI_TRANSPARENT_CLOUD 3, CLOUD 4, MISSING 5, i.e. the channel
index; its mosaic step turns the PNG's UNDEFINED (class * 63 + 3 = 3) into 3, the
semi-transparent code, by mistake. xcloud keeps UNDEFINED distinct, as 0 (the value the
mosaic's translation table keeps for 0). MISSING is also the no-data value: pixels the network
puts in its MISSING channel and pixels without input read the same. These are not the KappaSet
label codes (0 MISSING .. 5 UNDEFINED, the ``kappamask`` label scheme of
:mod:`xcloud.evaluation.schemes`); masks read as its ``kappamask-km-predict`` scheme.
"""

_SENSEI_V2_NO_DATA = CloudClass(6, "no_data", "no valid input data (SEnSeI-v2's no-data class)",
                                "#000000")
SENSEI_V2_SCHEME = ClassScheme(
    name="sensei-v2",
    classes=(
        CloudClass(0, "land", "clear land", "#4daf4a"),
        CloudClass(1, "water", "clear water", "#377eb8"),
        CloudClass(2, "snow", "snow and ice", "#e0f3f8"),
        CloudClass(3, "thin_cloud", "thin (semi-transparent) cloud", "#a6cee3"),
        CloudClass(4, "thick_cloud", "thick cloud", "#ffffff"),
        CloudClass(5, "cloud_shadow", "cloud shadow", "#555555"),
        _SENSEI_V2_NO_DATA,
    ),
    nodata=_SENSEI_V2_NO_DATA,
)
"""SEnSeI-v2's 7 classes (Francis 2024) in the network's channel order, with its own codes.

Channel ``k`` is class value ``k``; channel 6, NO DATA, is both a predicted class (the network
has a softmax channel for it, kept in the probabilities) and the scheme's no-data value (the
engine also writes it where the input is all NaN). Masks read as the ``sensei-v2`` label
scheme of :mod:`xcloud.evaluation.schemes`.
"""

SENSEI_V2_4CLASS_SCHEME = ClassScheme(
    name="sensei-v2-4class",
    classes=_clear_thick_thin_shadow("clear surface (land, water or snow)", "thick cloud"),
    nodata=NO_DATA,
)
"""The 4 output channels of the published 4-class SEnSeI-v2 models (``CLASSES: 4``:
``SEnSeIv2-DeepLabv3-S2-unambiguous`` and the ``SegFormerB2-S2-unambiguous`` baseline), in
their order: 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow.

It is the order of the released ``CloudMask`` '4-class' output, which for a 4-class model
passes the network's channels through as they are ("classes are already in the correct
order") and which a 7-class model's output is summed into. Channel ``k`` is class value ``k``.
These networks have no no-data channel: pixels without input are marked 255, as for the other
models without one.
"""
