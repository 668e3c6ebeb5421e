"""Label schemes of cloud masks and the levels at which two of them can be compared.

Every class of every scheme is described by what it *may* contain, as a set of the four
finest classes that the datasets and models here distinguish, its **meaning**:

``clear``, ``cloud_shadow``, ``thin_cloud`` (semi-transparent, cirrus), ``thick_cloud``

(ukis' ``cloud`` is ``{thin_cloud, thick_cloud}``; s2cloudless' ``clear`` is
``{clear, cloud_shadow}``, since it does not look for shadows). Classes that are not scored have
the meaning ``{missing}`` (no data) or ``{undefined}`` (labelled as undecided).

A **level** partitions the four classes; from finest to coarsest:

============  ===========================================================
full          clear, cloud_shadow, thin_cloud, thick_cloud
cloud_shadow  clear, cloud_shadow, cloud (thin + thick)
cloud         non_cloud (clear + shadow), cloud (thin + thick)
valid         valid (clear), invalid (shadow + thin + thick)
============  ===========================================================

A scheme can be scored at a level when each of its classes falls inside one class of the level.
Two schemes are compared at the first level in this order that both support
(:func:`finest_shared_level`): KappaMask vs CloudSEN12 labels at ``full``, ukis vs KappaMask at
``cloud_shadow``, s2cloudless vs anything at ``cloud``. (``cloud`` and ``valid`` do not refine
each other; where both are shared, ``cloud`` is preferred.)

The mapping of each scheme to the KappaMask classes (Domnich et al. 2021, Table 1) follows from
the meanings too, see :meth:`LabelScheme.kappamask_class`.

The schemes of the models' masks (``ukis-csmask``, ``s2cloudless``, ``kappamask-km-predict``,
``cloudsen12``, ``sensei-v2``, ``sensei-v2-4class``) are the models' class schemes
(:mod:`xcloud.models.classes`) with a meaning for each class
(:meth:`LabelScheme.from_class_scheme`): their classes are written once, there.

Sources and caveats:

- ``kappamask`` is the KappaSet label coding (0 missing .. 5 undefined).
  ``kappamask-km-predict`` is the coding of the KappaMask models' masks, km_predict's product
  coding (mask value = network channel): 0 undefined, 1 clear, 2 cloud shadow,
  3 semi-transparent cloud, 4 cloud, 5 missing (km_predict's GeoTIFF mosaic writes its
  undefined pixels as 3 by mistake; xcloud keeps 0).
- Sen2Cor SCL 1 (saturated or defective) -> missing and 7 (unclassified) -> clear, and the
  value codes of ``cmix``, were not checked against the paper's text: pass your own
  :class:`LabelScheme` if your data say otherwise.
- ``sensei-v2``: channels 0-2 are the clear surfaces (land, water, snow), 3 thin cloud,
  4 thick cloud, 5 cloud shadow, 6 no data, as SEnSeIv2's own 4-class and cloud/valid
  post-processing reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DatasetError, XcloudError
from ..models.classes import (
    CLOUDSEN12_SCHEME,
    KAPPAMASK_SCHEME,
    S2CLOUDLESS_SCHEME,
    SENSEI_V2_4CLASS_SCHEME,
    SENSEI_V2_SCHEME,
    UKIS_SCHEME,
    ClassScheme,
)
from ..models.protocol import ModelInfo

__all__ = [
    "CLEAR",
    "CLOUD",
    "CLOUDSEN12",
    "CMIX",
    "FMASK",
    "FMSC",
    "IGNORE",
    "INVALID",
    "KAPPAMASK",
    "KAPPAMASK_KM_PREDICT",
    "LEVELS",
    "MISSING",
    "NOT_CLOUD",
    "S2CLOUDLESS",
    "SEN2COR_SCL",
    "SENSEI_V2",
    "SENSEI_V2_4CLASS",
    "SENSEI_V2_VALID",
    "SHADOW",
    "THICK",
    "THIN",
    "UKIS",
    "UKIS_TESTFILE",
    "UNDEFINED",
    "LabelScheme",
    "Level",
    "SchemeClass",
    "SchemeError",
    "finest_shared_level",
    "get_level",
    "get_scheme",
    "register_scheme",
    "scheme_names",
    "scheme_of_model",
]

IGNORE = 255
"""Level value of pixels that are not scored (no data, undefined)."""

CLEAR = frozenset({"clear"})
SHADOW = frozenset({"cloud_shadow"})
THIN = frozenset({"thin_cloud"})
THICK = frozenset({"thick_cloud"})
CLOUD = THIN | THICK
NOT_CLOUD = CLEAR | SHADOW
INVALID = SHADOW | CLOUD
MISSING = frozenset({"missing"})
UNDEFINED = frozenset({"undefined"})
_SCORED = CLEAR | SHADOW | CLOUD
_UNSCORED = (MISSING, UNDEFINED)
_NAMED_MEANINGS = {"clear": CLEAR, "cloud_shadow": SHADOW, "thin_cloud": THIN,
                   "thick_cloud": THICK, "undefined": UNDEFINED}


class SchemeError(XcloudError, ValueError):
    """A label scheme or level that is unknown or malformed, or that cannot score a mask."""


@dataclass(frozen=True)
class Level:
    """A partition of the four finest classes: ``classes`` are ``(name, meaning)`` pairs."""

    name: str
    classes: tuple[tuple[str, frozenset[str]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, in class-index order."""
        return tuple(name for name, _ in self.classes)

    def index(self, meaning: frozenset[str]) -> int | None:
        """Index of the class that contains ``meaning``; ``None`` if it spans several."""
        return next((i for i, (_, group) in enumerate(self.classes) if meaning <= group), None)

    def refines(self, other: Level) -> bool:
        """Whether every class of this level lies inside one class of ``other``."""
        return all(other.index(group) is not None for _, group in self.classes)

    def members(self, meaning: frozenset[str]) -> list[int]:
        """Indices of this level's classes that lie inside ``meaning``."""
        return [i for i, (_, group) in enumerate(self.classes) if group <= meaning]


LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level("full", (("clear", CLEAR), ("cloud_shadow", SHADOW), ("thin_cloud", THIN),
                       ("thick_cloud", THICK))),
        Level("cloud_shadow", (("clear", CLEAR), ("cloud_shadow", SHADOW), ("cloud", CLOUD))),
        Level("cloud", (("non_cloud", NOT_CLOUD), ("cloud", CLOUD))),
        Level("valid", (("valid", CLEAR), ("invalid", INVALID))),
    )
}
"""The levels, finest first."""


def get_level(name: str | Level) -> Level:
    """The :class:`Level` called ``name`` (one of :data:`LEVELS`)."""
    if isinstance(name, Level):
        return name
    try:
        return LEVELS[name]
    except KeyError:
        raise SchemeError(f"no level {name!r}; levels: {', '.join(LEVELS)}") from None


@dataclass(frozen=True)
class SchemeClass:
    """One value of a label scheme, its name and its meaning (see the module docstring)."""

    value: int
    name: str
    meaning: frozenset[str]


_KAPPAMASK_VALUE = {MISSING: 0, CLEAR: 1, SHADOW: 2, THIN: 3, THICK: 4, UNDEFINED: 5,
                    CLOUD: 4, NOT_CLOUD: 1}


@dataclass(frozen=True)
class LabelScheme:
    """The classes of a mask or of reference labels, with their meanings.

    ``source`` says where the values come from.
    """

    name: str
    classes: tuple[SchemeClass, ...]
    source: str = ""

    def __post_init__(self) -> None:
        values = [c.value for c in self.classes]
        if len(set(values)) != len(values) or not all(0 <= v <= 255 for v in values):
            raise SchemeError(f"{self.name}: class values {values} must be unique, 0..255")
        for c in self.classes:
            if not (c.meaning in _UNSCORED or (c.meaning and c.meaning <= _SCORED)):
                raise SchemeError(f"{self.name}: class {c.name} has meaning {set(c.meaning)}")

    @classmethod
    def from_class_scheme(cls, scheme: ClassScheme,
                          meanings: Mapping[str, frozenset[str]] | None = None, *,
                          source: str = "") -> LabelScheme:
        """The label scheme of a model's :class:`ClassScheme`, its classes in channel order.

        ``meanings`` maps class names to meanings; classes named as a class of the ``full``
        level (``clear``, ``cloud_shadow``, ``thin_cloud``, ``thick_cloud``) or ``undefined``
        mean that class unless it says otherwise. The no-data class is missing (listed once,
        also where the network predicts it).
        """
        known = {**_NAMED_MEANINGS, **(meanings or {})}
        nodata = scheme.nodata
        unnamed = [c.name for c in scheme.classes
                   if c.value != nodata.value and c.name not in known]
        if unnamed:
            raise SchemeError(f"{scheme.name}: classes {unnamed} have no meaning; pass "
                              "meanings={name: meaning} for them")
        classes = tuple(SchemeClass(c.value, c.name, MISSING if c.value == nodata.value
                                    else known[c.name]) for c in scheme.classes)
        extra = () if nodata.value in scheme.values else (
            SchemeClass(nodata.value, nodata.name, MISSING),)
        return cls(scheme.name, (*classes, *extra), source=source)

    @property
    def values(self) -> tuple[int, ...]:
        """The class values."""
        return tuple(c.value for c in self.classes)

    def supports(self, level: str | Level) -> bool:
        """Whether every scored class lies inside one class of ``level``."""
        level = get_level(level)
        return all(c.meaning in _UNSCORED or level.index(c.meaning) is not None
                   for c in self.classes)

    def levels(self) -> tuple[str, ...]:
        """Names of the levels this scheme can be scored at, finest first."""
        return tuple(name for name in LEVELS if self.supports(name))

    def require(self, level: str | Level) -> Level:
        """The :class:`Level` ``level``; :class:`SchemeError` if this scheme does not support it."""
        level = get_level(level)
        if not self.supports(level):
            raise SchemeError(f"scheme {self.name} cannot be scored at level {level.name}; "
                              f"it supports {', '.join(self.levels()) or 'no level'}")
        return level

    def lookup(self, level: str | Level) -> np.ndarray:
        """(256,) uint8 table: class value -> class index at ``level``, :data:`IGNORE` else."""
        level = self.require(level)
        table = np.full(256, IGNORE, np.uint8)
        for c in self.classes:
            if c.meaning not in _UNSCORED:
                index = level.index(c.meaning)
                assert index is not None  # require() checked every scored class has one
                table[c.value] = index
        return table

    def _check_values(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.dtype.kind not in "iu":
            raise DatasetError(f"{self.name} values must be integers, got {values.dtype}")
        if values.size and (values.min() < 0 or values.max() > 255):
            present = np.unique(values)
        else:
            present = np.flatnonzero(np.bincount(values.ravel().astype(np.intp), minlength=256))
        unknown = np.setdiff1d(present, self.values)
        if unknown.size:
            raise DatasetError(f"values {unknown[:10].tolist()} are not classes of the "
                                  f"{self.name} scheme ({self.describe()})")
        return values

    def to_level(self, values: Any, level: str | Level) -> np.ndarray:
        """Class indices at ``level`` (uint8, :data:`IGNORE` where not scored) of ``values``."""
        return self.lookup(level)[self._check_values(values)]

    def kappamask_class(self, value: int) -> int:
        """The KappaMask class (Domnich et al. 2021, Table 1) of class ``value``.

        0 missing, 1 clear, 2 cloud shadow, 3 semi-transparent cloud, 4 cloud, 5 undefined.
        Cloud of unknown thickness maps to 4 (cloud), "clear or shadow" to 1 (clear) and other
        unions (e.g. "invalid") to 5 (undefined).
        """
        meaning = next((c.meaning for c in self.classes if c.value == value), None)
        if meaning is None:
            raise SchemeError(f"{value} is not a class of {self.name} ({self.describe()})")
        return _KAPPAMASK_VALUE.get(meaning, 5)

    def to_kappamask(self, values: Any) -> np.ndarray:
        """``values`` mapped to the KappaMask classes (uint8)."""
        table = np.zeros(256, np.uint8)
        for value in self.values:
            table[value] = self.kappamask_class(value)
        return table[self._check_values(values)]

    def describe(self) -> str:
        """``"0 clear, 1 cloud, ..."``."""
        return ", ".join(f"{c.value} {c.name}" for c in self.classes)


def _scheme(name: str, source: str, *classes: tuple[int, str, frozenset[str]]) -> LabelScheme:
    return LabelScheme(name, tuple(SchemeClass(*c) for c in classes), source=source)


KAPPAMASK = _scheme(
    "kappamask", "KappaMask / KappaSet labels (Domnich et al. 2021, Remote Sensing 13, 4100)",
    (0, "missing", MISSING), (1, "clear", CLEAR), (2, "cloud_shadow", SHADOW),
    (3, "semi_transparent_cloud", THIN), (4, "cloud", THICK), (5, "undefined", UNDEFINED),
)
SEN2COR_SCL = _scheme(
    "sen2cor-scl", "Sentinel-2 L2A scene classification (Sen2Cor SCL); KappaMask Table 1: "
    "cloud medium and high probability -> cloud, thin cirrus -> semi-transparent, surfaces, "
    "snow and unclassified -> clear, no data and saturated/defective -> missing",
    (0, "no_data", MISSING), (1, "saturated_or_defective", MISSING),
    (2, "dark_area_pixels", CLEAR), (3, "cloud_shadows", SHADOW), (4, "vegetation", CLEAR),
    (5, "not_vegetated", CLEAR), (6, "water", CLEAR), (7, "unclassified", CLEAR),
    (8, "cloud_medium_probability", THICK), (9, "cloud_high_probability", THICK),
    (10, "thin_cirrus", THIN), (11, "snow", CLEAR),
)
FMASK = _scheme(
    "fmask", "Fmask 4 output (Qiu et al. 2019); its cloud includes thin cloud",
    (0, "clear_land", CLEAR), (1, "clear_water", CLEAR), (2, "cloud_shadow", SHADOW),
    (3, "snow", CLEAR), (4, "cloud", CLOUD), (255, "no_data", MISSING),
)
CMIX = _scheme(
    "cmix", "CMIX reference classes (Skakun et al. 2022); values in this order by convention",
    (0, "clear", CLEAR), (1, "cloud", THICK), (2, "semi_transparent_cloud", THIN),
    (3, "cloud_shadow", SHADOW),
)
FMSC = _scheme(
    "fmsc", "Sentinel-2 Cloud Mask Catalogue (Francis et al. 2020), classification masks",
    (0, "clear", CLEAR), (1, "cloud", CLOUD), (2, "cloud_shadow", SHADOW),
)
SENSEI_V2_VALID = _scheme(
    "sensei-v2-valid-invalid", "SEnSeI-v2 'valid-invalid' output (Francis 2024)",
    (0, "valid", CLEAR), (1, "invalid", INVALID),
)
UKIS_TESTFILE = _scheme(
    "ukis-csmask-testfile", "labels of the ukis-csmask test patch (sentinel2.npz 'msk')",
    (0, "cloud_shadow", SHADOW), (1, "clear_1", CLEAR), (2, "clear_2", CLEAR),
    (3, "clear_3", CLEAR), (4, "cloud", CLOUD),
)

# the models' outputs: their class schemes, each class given its meaning
KAPPAMASK_KM_PREDICT = LabelScheme.from_class_scheme(
    KAPPAMASK_SCHEME, {"semi_transparent_cloud": THIN, "cloud": THICK},
    source="KappaMask models' masks (km_predict product coding: value = channel)",
)
CLOUDSEN12 = LabelScheme.from_class_scheme(
    CLOUDSEN12_SCHEME, source="CloudSEN12 labels (Aybar et al. 2022)")
SENSEI_V2 = LabelScheme.from_class_scheme(
    SENSEI_V2_SCHEME, {"land": CLEAR, "water": CLEAR, "snow": CLEAR},
    source="SEnSeI-v2 7-class output (Francis 2024)",
)
SENSEI_V2_4CLASS = LabelScheme.from_class_scheme(
    SENSEI_V2_4CLASS_SCHEME,
    source="SEnSeI-v2 '4-class' output (Francis 2024): clear, thick, thin, shadow, in the "
    "order of the released CloudMask and of the 4-class published models",
)
UKIS = LabelScheme.from_class_scheme(
    UKIS_SCHEME, {"cloud": CLOUD}, source="ukis-csmask models (Wieland et al. 2019)")
S2CLOUDLESS = LabelScheme.from_class_scheme(
    S2CLOUDLESS_SCHEME, {"clear": NOT_CLOUD, "cloud": CLOUD},
    source="s2cloudless (no shadow class: its clear is clear or shadow)",
)

_SCHEMES: dict[str, LabelScheme] = {}


def register_scheme(scheme: LabelScheme, *, overwrite: bool = False) -> LabelScheme:
    """Make ``scheme`` known by name (models are matched by their ``ClassScheme`` name)."""
    if scheme.name in _SCHEMES and not overwrite and _SCHEMES[scheme.name] != scheme:
        raise SchemeError(f"a label scheme {scheme.name!r} is already registered; pass "
                          "overwrite=True to replace it")
    _SCHEMES[scheme.name] = scheme
    return scheme


for _builtin in (KAPPAMASK, KAPPAMASK_KM_PREDICT, SEN2COR_SCL, FMASK, CMIX, FMSC, CLOUDSEN12,
                 SENSEI_V2, SENSEI_V2_4CLASS, SENSEI_V2_VALID, UKIS_TESTFILE, UKIS, S2CLOUDLESS):
    register_scheme(_builtin)


def scheme_names() -> list[str]:
    """Names of the registered label schemes, sorted."""
    return sorted(_SCHEMES)


def get_scheme(name: str | LabelScheme) -> LabelScheme:
    """The registered :class:`LabelScheme` called ``name``."""
    if isinstance(name, LabelScheme):
        return name
    try:
        return _SCHEMES[name]
    except KeyError:
        raise SchemeError(f"no label scheme {name!r}; known: {', '.join(scheme_names())}. "
                          "Define one with LabelScheme and register_scheme()") from None


def scheme_of_model(info: ModelInfo) -> LabelScheme:
    """The label scheme of a model's output, found by the name of its class scheme."""
    return get_scheme(info.scheme.name)


def finest_shared_level(a: str | LabelScheme, b: str | LabelScheme) -> Level:
    """The finest level at which both schemes can be scored (order of :data:`LEVELS`)."""
    a, b = get_scheme(a), get_scheme(b)
    for level in LEVELS.values():
        if a.supports(level) and b.supports(level):
            return level
    raise SchemeError(f"schemes {a.name} ({', '.join(a.levels())}) and {b.name} "
                      f"({', '.join(b.levels())}) share no level")
