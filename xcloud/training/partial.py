"""Partial labels for SEnSeI-v2 (Francis 2024, IEEE TGRS): schemes, data sets, training.

Every data set is mapped to the seven SEnSeI-v2 target classes, :data:`TARGET_CLASSES`::

    0 land, 1 water, 2 snow, 3 thin_cloud, 4 thick_cloud, 5 cloud_shadow, 6 no_data

(the order of the ``sensei-v2`` scheme of :mod:`xcloud.evaluation.schemes`). A data set's
label value becomes the *set* of target classes it may stand for, a multi-hot partial label
(:class:`PartialScheme`, :func:`to_multi_hot`); the ambiguous losses of
:mod:`xcloud.training.losses` then learn from all data sets at once, each telling what it
knows. The mappings of the paper's Table I, as implemented here:

=====================  =======================================================================
``cloudsen12``         clear -> land|water|snow, thick_cloud, thin_cloud, cloud_shadow
``fmsc``               Sentinel-2 Cloud Mask Catalogue: clear -> land|water|snow,
                       cloud -> thin|thick, shadow; scene tags narrow them (see below)
``kappaset``           missing -> no_data, clear -> land|water|snow, shadow, semi-transparent
                       -> thin, cloud -> thick, undefined -> any class but no_data
``cesbio``             no data, (1 not used: ignored), low and high clouds -> thin|thick,
                       shadow, land, water, snow
``sparcs``             shadow and shadow over water -> shadow, water, snow/ice, land,
                       cloud -> thin|thick, flooded -> land|water
``l8-biome``           fill -> no_data, shadow, clear -> land|water|snow, thin, thick
``l8-biome-noshadow``  the scenes without shadow labels: clear -> land|water|snow|shadow
``cloudperu2``         clear -> land|water|snow|shadow, cloud -> thin|thick
=====================  =======================================================================

Scene tags (``fmsc``): with ``tags=`` given, a class that a scheme *licenses* by tags is a
candidate only if one of its tags is present: snow needs ``snow/ice``, water one of ``open
water``, ``enclosed water``, ``coastal``, ``wetland/bog/marsh``, ``water``; thin and thick
cloud need ``thin`` / ``thick``. When a tag set rules out every candidate of a label (a
cloud with neither thickness tag), that label keeps its full set. Without ``tags`` nothing is
narrowed. Tags compare case-insensitively, with runs of other characters read as ``_``.

Sources and caveats: value codes are those of the data sets' own files (CloudSEN12 0-3,
and 255 where the ``cloudsen12`` evaluation scheme has no data;
catalogue 0 clear, 1 cloud, 2 shadow as in the ``fmsc`` scheme; KappaSet 0-5; CESBIO
0 no data, 1 not used, 2 low clouds, 3 high clouds, 4 shadows, 5 land, 6 water, 7 snow;
SPARCS 0 shadow, 1 shadow over water, 2 water, 3 snow/ice, 4 land, 5 cloud, 6 flooded;
L8 Biome 0/64/128/192/255; CloudPeru2 0 clear, 1 cloud, so divide 0/255 masks by 255).
The thickness of CESBIO's and SPARCS's clouds is left open since neither data set labels it,
and KappaSet's undefined keeps "valid data" as its only information; the paper's Table I
was not at hand to check these choices against, so pass your own :class:`PartialScheme`
where your data say otherwise.

Training: :func:`train_partial` fits a model whose forward is ``model(image (N, B, H, W),
descriptors (N, B, D)) -> logits (N, 7, H, W)`` (SEnSeI-v2 as the authors released it,
:func:`xcloud.models.sensei.sensei_v2`: the network their published weights load into, so
xcloud-trained and published models are one architecture) with the ambiguous cross-entropy,
Adam, the learning
rate reduced on a plateau and optional early stopping. Each data set brings its scheme, its
bands and their descriptors; a batch mixes images of all data sets, those with fewer bands
padded and masked out (``band_mask``), so that batch norm sees at training what it sees at
inference. SEnSeI-v2's recovery module (when the network has one) adds its reconstruction
MSE (``aux_weight``), and
batch-norm statistics are re-estimated after each epoch. :func:`xcloud.training.train.train`
(``xcloud.train``) dispatches to :func:`fit_partial` when given :class:`PartialLabelDataset`
(s) or a ``model="sensei-v2..."``; KappaSet folders then join in with :data:`KAPPASET`.

The generated data sets (:func:`synthetic_partial_datasets`) are one scene generator with a
full truth seen through two schemes: :data:`SYNTHETIC_A` tells land, water and snow apart
but not cloud thickness, :data:`SYNTHETIC_B` the reverse, with different bands; a model
trained on both learns all seven classes (``tests/test_partial.py``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from .._optional import import_optional
from ..errors import DatasetError
from ..evaluation import schemes as _schemes
from ..synthetic import SPECTRA, smooth_field
from .kappaset import synthetic_masks
from .loop import Entry, LoopState, fit, optimiser, torch_device, train_steps

if TYPE_CHECKING:
    from .train import TrainResult

__all__ = [
    "BN_BATCHES",
    "CESBIO",
    "CLOUDPERU2",
    "CLOUDSEN12",
    "FMSC",
    "KAPPASET",
    "L8_BIOME",
    "L8_BIOME_NO_SHADOW",
    "N_TARGETS",
    "PARTIAL_SCHEMES",
    "SENSEI_V2_TARGETS",
    "SPARCS",
    "SYNTHETIC_A",
    "SYNTHETIC_A_BANDS",
    "SYNTHETIC_B",
    "TARGET_CLASSES",
    "PartialLabelDataset",
    "PartialScheme",
    "evaluate_partial",
    "fit_partial",
    "get_partial_scheme",
    "is_partial_data",
    "simulate_labels",
    "synthetic_partial_datasets",
    "synthetic_partial_scene",
    "to_multi_hot",
    "train_partial",
]

TARGET_CLASSES: tuple[str, ...] = tuple(c.name for c in _schemes.SENSEI_V2.classes)
"""The seven SEnSeI-v2 classes, in channel order."""
N_TARGETS = len(TARGET_CLASSES)
BN_BATCHES = 64
"""Training batches over which :func:`train_partial` re-estimates batch-norm statistics."""

_LAND, _WATER, _SNOW, _THIN, _THICK, _SHADOW, _NO_DATA = (
    frozenset({name}) for name in TARGET_CLASSES)
_SURFACE = _LAND | _WATER | _SNOW
_CLOUD = _THIN | _THICK
_VALID = frozenset(TARGET_CLASSES) - _NO_DATA

# The fine meanings of xcloud.evaluation.schemes in target classes.
_FINE = {"clear": _SURFACE, "cloud_shadow": _SHADOW, "thin_cloud": _THIN,
         "thick_cloud": _THICK, "missing": _NO_DATA, "undefined": _VALID}


def _tag(text: str) -> str:
    """``text`` lower-cased, runs of other characters than letters and digits as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# ---------------------------------------------------------------------------------------------
# Schemes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialScheme:
    """A data set's label values as sets of :data:`TARGET_CLASSES` (partial labels).

    Parameters
    ----------
    name
        Name of the scheme.
    classes
        ``{label value: target classes it may be}``; an empty set marks a value to ignore.
    names
        ``{label value: the data set's name for it}`` (for tables and messages).
    licences
        ``{target class: tags}``: with per-scene ``tags``, the class is a candidate only
        where one of these tags is present (see the module docstring).
    source
        Where the codes come from.
    """

    name: str
    classes: Mapping[int, Collection[str]]
    names: Mapping[int, str] = field(default_factory=dict)
    licences: Mapping[str, Collection[str]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        """Freeze the sets and check the values and targets."""
        classes = {int(v): frozenset(t) for v, t in self.classes.items()}
        licences = {c: frozenset(_tag(t) for t in tags) for c, tags in self.licences.items()}
        unknown = set().union(*classes.values(), licences) - set(TARGET_CLASSES)
        if unknown or not all(0 <= v <= 255 for v in classes):
            raise DatasetError(f"scheme {self.name}: values must lie in 0..255 and targets in "
                               f"{TARGET_CLASSES}; got values {sorted(classes)} and "
                               f"unknown targets {sorted(unknown)}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "licences", licences)
        object.__setattr__(self, "names", {int(v): str(n) for v, n in self.names.items()})

    @classmethod
    def from_label_scheme(cls, scheme: _schemes.LabelScheme, *, name: str | None = None,
                          licences: Mapping[str, Collection[str]] | None = None,
                          source: str | None = None) -> PartialScheme:
        """The partial scheme of an evaluation :class:`~xcloud.evaluation.schemes.LabelScheme`.

        clear -> land|water|snow, shadow, thin and thick cloud as they are, missing ->
        no_data, undefined -> any class but no_data.

        Parameters
        ----------
        scheme
            The evaluation scheme.
        name, licences, source
            The partial scheme's name (default: ``scheme``'s), its licences (see
            :class:`PartialScheme`) and source (default: ``scheme``'s).

        Returns
        -------
        PartialScheme
            The scheme's values as sets of target classes.
        """
        classes = {c.value: frozenset().union(*(_FINE[m] for m in c.meaning))
                   for c in scheme.classes}
        return cls(name or scheme.name, classes, {c.value: c.name for c in scheme.classes},
                   licences or {}, scheme.source if source is None else source)

    @property
    def values(self) -> tuple[int, ...]:
        """The label values, sorted."""
        return tuple(sorted(self.classes))

    def candidates(self, value: int, *, tags: Iterable[str] | None = None) -> frozenset[str]:
        """Target classes label ``value`` may be, narrowed by the scene's ``tags`` if given.

        Parameters
        ----------
        value
            A label value of this scheme.
        tags
            The scene's tags (see the module docstring); ``None``: nothing is narrowed.

        Returns
        -------
        frozenset of str
            The candidate target classes (empty for a value to ignore).

        Raises
        ------
        DatasetError
            If ``value`` is not a label of this scheme.
        """
        if value not in self.classes:
            raise DatasetError(f"{value} is not a label of scheme {self.name} "
                               f"({self.describe()})")
        # __post_init__ made every target and licence set a frozenset
        targets = cast(frozenset[str], self.classes[value])
        if tags is None:
            return targets
        present = {_tag(t) for t in tags}
        ruled_out = {c for c, licence in self.licences.items()
                     if not cast(frozenset[str], licence) & present}
        return (targets - ruled_out) or targets

    def lookup(self, *, tags: Iterable[str] | None = None) -> np.ndarray:
        """Label value -> its multi-hot partial label, as a table.

        Parameters
        ----------
        tags
            The scene's tags, as in :meth:`candidates`.

        Returns
        -------
        numpy.ndarray
            ``(256, 7)`` bool: row ``v`` is the partial label of value ``v`` (all False for
            values outside the scheme).
        """
        tags = None if tags is None else list(tags)
        table = np.zeros((256, N_TARGETS), bool)
        for value in self.classes:
            for target in self.candidates(value, tags=tags):
                table[value, TARGET_CLASSES.index(target)] = True
        return table

    def to_multi_hot(self, labels: Any, *, tags: Iterable[str] | None = None) -> np.ndarray:
        """Multi-hot partial labels of integer ``labels``.

        Parameters
        ----------
        labels
            Integer labels of this scheme, any shape.
        tags
            The scene's tags, as in :meth:`candidates`.

        Returns
        -------
        numpy.ndarray
            ``(7, *labels.shape)`` bool, in :data:`TARGET_CLASSES` order.

        Raises
        ------
        DatasetError
            For labels that are not integers or not values of this scheme.
        """
        labels = self._check(np.asarray(labels))
        return np.moveaxis(self.lookup(tags=tags)[labels], -1, 0)

    def _check(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` as ``intp``, checked to be integer values of this scheme."""
        if labels.dtype.kind not in "iub":
            raise DatasetError(f"{self.name} labels must be integers, got {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise DatasetError(f"{self.name} labels must lie in 0..255")
        present = np.flatnonzero(np.bincount(labels.ravel().astype(np.intp), minlength=256))
        unknown = np.setdiff1d(present, self.values)
        if unknown.size:
            raise DatasetError(f"values {unknown[:10].tolist()} are not labels of scheme "
                               f"{self.name} ({self.describe()})")
        return labels.astype(np.intp, copy=False)

    def describe(self) -> str:
        """The values, their names and target classes as text.

        Returns
        -------
        str
            ``"0 clear: land|water|snow, 1 thick_cloud: thick_cloud, ..."``.
        """
        return ", ".join(f"{v} {self.names.get(v, v)}: {self._targets_text(v)}"
                         for v in self.values)

    def _targets_text(self, value: int) -> str:
        """``"land|water|snow"``: the target classes of ``value``, or ``"(ignored)"``."""
        targets = self.classes[value]
        return "|".join(c for c in TARGET_CLASSES if c in targets) or "(ignored)"


def to_multi_hot(labels: Any, scheme: PartialScheme | str, *,
                 tags: Iterable[str] | None = None) -> np.ndarray:
    """Multi-hot partial labels of ``labels`` in ``scheme``.

    Parameters
    ----------
    labels
        ``(H, W)`` integer labels.
    scheme
        A :class:`PartialScheme` or the name of a built-in one (:data:`PARTIAL_SCHEMES`).
    tags
        The scene's tags, as in :meth:`PartialScheme.candidates`.

    Returns
    -------
    numpy.ndarray
        ``(7, H, W)`` bool, in :data:`TARGET_CLASSES` order.
    """
    return get_partial_scheme(scheme).to_multi_hot(labels, tags=tags)


def _named(name: str, source: str,
           *classes: tuple[int, str, frozenset[str]], **options: Any) -> PartialScheme:
    """A scheme of ``(value, name, target classes)`` rows."""
    return PartialScheme(name, {v: t for v, _, t in classes}, {v: n for v, n, _ in classes},
                         source=source, **options)


_CATALOGUE_TAGS = {
    "snow": ("snow/ice", "snow", "ice"),
    "water": ("open water", "enclosed water", "coastal", "wetland/bog/marsh", "water"),
    "thin_cloud": ("thin", "thin cloud"),
    "thick_cloud": ("thick", "thick cloud"),
}

CLOUDSEN12 = PartialScheme.from_label_scheme(_schemes.CLOUDSEN12)
FMSC = PartialScheme.from_label_scheme(
    _schemes.FMSC, licences=_CATALOGUE_TAGS,
    source="Sentinel-2 Cloud Mask Catalogue (Francis et al. 2020); scene tags narrow clear "
    "and cloud")
KAPPASET = PartialScheme.from_label_scheme(_schemes.KAPPAMASK, name="kappaset")
CESBIO = _named(
    "cesbio", "CESBIO reference masks for Sentinel-2 (Baetens, Desjardins, Hagolle 2019)",
    (0, "no_data", _NO_DATA), (1, "not_used", frozenset()), (2, "low_clouds", _CLOUD),
    (3, "high_clouds", _CLOUD), (4, "cloud_shadows", _SHADOW), (5, "land", _LAND),
    (6, "water", _WATER), (7, "snow", _SNOW),
)
SPARCS = _named(
    "sparcs", "L8 SPARCS (Hughes and Hayes 2014), mask values 0-6",
    (0, "shadow", _SHADOW), (1, "shadow_over_water", _SHADOW), (2, "water", _WATER),
    (3, "snow_ice", _SNOW), (4, "land", _LAND), (5, "cloud", _CLOUD),
    (6, "flooded", _LAND | _WATER),
)
L8_BIOME = _named(
    "l8-biome", "L8 Biome / CCA validation masks (Foga et al. 2017), scenes with shadows",
    (0, "fill", _NO_DATA), (64, "cloud_shadow", _SHADOW), (128, "clear", _SURFACE),
    (192, "thin_cloud", _THIN), (255, "cloud", _THICK),
)
L8_BIOME_NO_SHADOW = _named(
    "l8-biome-noshadow", "L8 Biome scenes without shadow labels: clear may be shadow",
    (0, "fill", _NO_DATA), (128, "clear", _SURFACE | _SHADOW), (192, "thin_cloud", _THIN),
    (255, "cloud", _THICK),
)
CLOUDPERU2 = _named(
    "cloudperu2", "CloudPeru2, PeruSat-1 (Morales et al. 2019): cloud / not cloud",
    (0, "clear", _SURFACE | _SHADOW), (1, "cloud", _CLOUD),
)
SENSEI_V2_TARGETS = _named(
    "sensei-v2", "the SEnSeI-v2 target classes themselves (one-hot)",
    *((i, name, frozenset({name})) for i, name in enumerate(TARGET_CLASSES)),
)
SYNTHETIC_A = _named(
    "synthetic-a", "generated scenes: surfaces told apart, clouds of any thickness",
    (0, "land", _LAND), (1, "water", _WATER), (2, "snow", _SNOW), (3, "cloud", _CLOUD),
    (4, "cloud_shadow", _SHADOW), (5, "no_data", _NO_DATA),
)
SYNTHETIC_B = _named(
    "synthetic-b", "generated scenes: thin and thick cloud told apart, any clear surface",
    (0, "clear", _SURFACE), (1, "thin_cloud", _THIN), (2, "thick_cloud", _THICK),
    (3, "cloud_shadow", _SHADOW), (4, "no_data", _NO_DATA),
)

PARTIAL_SCHEMES: dict[str, PartialScheme] = {
    s.name: s for s in (CLOUDSEN12, FMSC, KAPPASET, CESBIO, SPARCS, L8_BIOME,
                        L8_BIOME_NO_SHADOW, CLOUDPERU2, SENSEI_V2_TARGETS, SYNTHETIC_A,
                        SYNTHETIC_B)
}
"""The built-in partial schemes by name."""


def get_partial_scheme(scheme: PartialScheme | str) -> PartialScheme:
    """The built-in :class:`PartialScheme` called ``scheme`` (or ``scheme`` itself).

    Parameters
    ----------
    scheme
        A scheme, or a name of :data:`PARTIAL_SCHEMES`.

    Returns
    -------
    PartialScheme
        The scheme.

    Raises
    ------
    DatasetError
        For an unknown name; the message lists the known ones.
    """
    if isinstance(scheme, PartialScheme):
        return scheme
    try:
        return PARTIAL_SCHEMES[scheme]
    except KeyError:
        raise DatasetError(f"no partial scheme {scheme!r}; known: "
                           f"{', '.join(sorted(PARTIAL_SCHEMES))}") from None


def simulate_labels(truth: Any, scheme: PartialScheme | str) -> np.ndarray:
    """Labels a data set of ``scheme`` would give to pixels of target classes ``truth``.

    Each target class goes to the one label value whose set contains it.

    Parameters
    ----------
    truth
        Integer indices of :data:`TARGET_CLASSES`, any shape.
    scheme
        A :class:`PartialScheme` or the name of a built-in one.

    Returns
    -------
    numpy.ndarray
        uint8 labels of ``scheme``, ``truth``'s shape.

    Raises
    ------
    DatasetError
        If a target class is in no label's set, or in several.
    """
    scheme = get_partial_scheme(scheme)
    table = np.zeros(N_TARGETS, np.uint8)
    for index, target in enumerate(TARGET_CLASSES):
        values = [v for v in scheme.values if target in scheme.classes[v]]
        if len(values) != 1:
            raise DatasetError(f"scheme {scheme.name} labels {target} with {len(values)} "
                               "values; simulate_labels needs exactly one")
        table[index] = values[0]
    return table[np.asarray(truth, np.intp)]


# ---------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------


class PartialLabelDataset:
    """Images of one sensor and band set with labels of one :class:`PartialScheme`.

    Parameters
    ----------
    images
        ``(n, B, H, W)`` float array (reflectance or however the model wants it).
    labels
        ``(n, H, W)`` integer labels in ``scheme``.
    scheme
        A :class:`PartialScheme` or the name of a built-in one.
    bands
        The ``B`` band names, for :func:`xcloud.models.sensei.band_descriptors`
        (``"B02"``, ``"landsat-8:B10"``, ...).
    descriptors
        ``(B, D)`` band descriptors instead of those derived from ``bands``.
    tags
        Per-image scene tags (a collection of strings, or ``None``) that narrow the labels.
    truth
        ``(n, H, W)`` full truth in :data:`TARGET_CLASSES` indices, where known (generated
        data), for :func:`evaluate_partial`.
    random_bands
        ``(low, high)``: each training image gets a random subset of ``low`` to ``high`` of
        its bands (SEnSeI's band sampling; validation uses all); ``None``: all bands.
    name
        Name shown in histories; the scheme's name by default.

    Notes
    -----
    ``dataset[i]`` is ``(image (B, H, W) float32, multi_hot (7, H, W) bool)``.
    """

    def __init__(self, images: Any, labels: Any, scheme: PartialScheme | str, *,
                 bands: Sequence[str], descriptors: Any = None,
                 tags: Sequence[Iterable[str] | None] | None = None, truth: Any = None,
                 random_bands: tuple[int, int] | None = None, name: str | None = None) -> None:
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels)
        self.scheme = get_partial_scheme(scheme)
        self.bands = tuple(bands)
        self.tags = None if tags is None else [None if t is None else list(t) for t in tags]
        self.truth = None if truth is None else np.asarray(truth)
        self.random_bands = random_bands
        self.name = name or self.scheme.name
        self._descriptors = None if descriptors is None else np.asarray(descriptors, np.float32)
        self._check()

    def _check(self) -> None:
        """Raise :class:`~xcloud.errors.DatasetError` for mismatched shapes or labels."""
        n, count = len(self.images), self.images.shape[1] if self.images.ndim == 4 else -1
        shapes_ok = (self.images.ndim == 4 and self.labels.shape == (n, *self.images.shape[2:])
                     and count == len(self.bands)
                     and (self.truth is None or self.truth.shape == self.labels.shape)
                     and (self.tags is None or len(self.tags) == n))
        if not shapes_ok:
            raise DatasetError(f"{self.name}: images must be (n, B, H, W) with B = "
                               f"{len(self.bands)} bands, labels (and truth) (n, H, W) and "
                               f"one tag set per image; got images {self.images.shape}, "
                               f"labels {self.labels.shape}")
        self.scheme._check(self.labels)

    @classmethod
    def from_kappaset(cls, data: Any, *, level: str = "L1C",
                      scale: float | None = None) -> PartialLabelDataset:
        """KappaSet tiles read into memory, labels in :data:`KAPPASET`.

        Parameters
        ----------
        data
            A folder of KappaSet tiles or a
            :class:`~xcloud.training.kappaset.KappaSetDataset`.
        level, scale
            The tiles' processing level and the factor from their band values to
            reflectance, for a folder (see :class:`~xcloud.training.kappaset.KappaSetDataset`).

        Returns
        -------
        PartialLabelDataset
            The spectral bands as stored (reflectance), named ``"kappaset"``.

        Raises
        ------
        DatasetError
            If there are no tiles.
        """
        from .kappaset import KappaSetDataset

        if not isinstance(data, KappaSetDataset):
            data = KappaSetDataset(data, level=level, scale=scale)
        bands = [b for b in data.features if b in _S2_BANDS]
        source = KappaSetDataset(data.tiles, level=data.level, features=bands, scale=data.scale)
        if not len(source):
            raise DatasetError(f"no KappaSet {data.level} tiles to read")
        images, labels = zip(*(source[i] for i in range(len(source))), strict=True)
        return cls(np.stack(images), np.stack(labels), KAPPASET, bands=bands, name="kappaset")

    def __len__(self) -> int:
        """The number of images."""
        return len(self.images)

    def __repr__(self) -> str:
        """Name, images, bands and scheme."""
        return (f"PartialLabelDataset({self.name}: {len(self)} images, {len(self.bands)} bands, "
                f"scheme {self.scheme.name})")

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (B, H, W) float32, multi_hot (7, H, W) bool)`` of image ``index``."""
        return self.images[index], self.multi_hot(index)

    def multi_hot(self, index: int) -> np.ndarray:
        """The partial labels of image ``index``, narrowed by its tags.

        Parameters
        ----------
        index
            The image.

        Returns
        -------
        numpy.ndarray
            ``(7, H, W)`` bool, in :data:`TARGET_CLASSES` order.
        """
        tags = None if self.tags is None else self.tags[index]
        return self.scheme.to_multi_hot(self.labels[index], tags=tags)

    @property
    def descriptors(self) -> np.ndarray:
        """``(B, D)`` float32 band descriptors (from ``bands`` unless given)."""
        if self._descriptors is None:
            from ..models.sensei import band_descriptors

            self._descriptors = band_descriptors(self.bands)
        return self._descriptors

    def subset(self, indices: Sequence[int]) -> PartialLabelDataset:
        """The images ``indices``, with this data set's options.

        Parameters
        ----------
        indices
            Indices of the images to keep, in the order to keep them.

        Returns
        -------
        PartialLabelDataset
            The images with their labels, tags and truth.
        """
        indices = list(indices)
        return PartialLabelDataset(
            self.images[indices], self.labels[indices], self.scheme, bands=self.bands,
            descriptors=self._descriptors, random_bands=self.random_bands, name=self.name,
            tags=None if self.tags is None else [self.tags[i] for i in indices],
            truth=None if self.truth is None else self.truth[indices])

    def split(self, fraction: float = 0.2, *,
              seed: int = 0) -> tuple[PartialLabelDataset, PartialLabelDataset]:
        """Random split by image.

        Parameters
        ----------
        fraction
            Part of the images that goes to validation, in [0, 1).
        seed
            Seed of the split.

        Returns
        -------
        train, validation : PartialLabelDataset
            The two parts, each in the original order.

        Raises
        ------
        DatasetError
            For a ``fraction`` outside [0, 1).
        """
        if not 0 <= fraction < 1:
            raise DatasetError(f"fraction must be in [0, 1), got {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = round(len(self) * fraction)
        return self.subset(sorted(order[n_val:])), self.subset(sorted(order[:n_val]))


def is_partial_data(data: Any) -> bool:
    """Whether ``data`` is a :class:`PartialLabelDataset` or a sequence of them.

    Parameters
    ----------
    data
        What :func:`xcloud.training.train.train` was given.

    Returns
    -------
    bool
        True for a data set or a non-empty sequence of data sets only.
    """
    if isinstance(data, PartialLabelDataset):
        return True
    return (isinstance(data, Sequence) and not isinstance(data, str) and bool(data)
            and all(isinstance(item, PartialLabelDataset) for item in data))


# ---------------------------------------------------------------------------------------------
# Generated scenes with a known full truth
# ---------------------------------------------------------------------------------------------

_SURFACE_SPECTRA = {  # B01 .. B12 (13 bands), top-of-atmosphere reflectance
    "water": [0.11, 0.09, 0.07, 0.05, 0.04, 0.03, 0.025, 0.02, 0.018, 0.01, 0.001, 0.008,
              0.005],
    "snow": [0.85, 0.84, 0.82, 0.80, 0.78, 0.75, 0.72, 0.70, 0.68, 0.45, 0.01, 0.10, 0.06],
}
_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
             "B11", "B12")
SYNTHETIC_A_BANDS = ("B02", "B03", "B04", "B8A", "B11", "B12")
"""Bands of generated data set A (Landsat-like: blue, green, red, NIR, two SWIR)."""


def _truth(masks: dict[str, np.ndarray], rng: np.random.Generator, side: int) -> np.ndarray:
    """A scene's target classes: land, water and snow fields under the masks' clouds."""
    water_field, snow_field = smooth_field(rng, side, side / 10), smooth_field(rng, side, side / 10)
    water = water_field > np.quantile(water_field, 0.8)
    snow = (snow_field > np.quantile(snow_field, 0.85)) & ~water
    truth = np.where(water, 1, np.where(snow, 2, 0)).astype(np.uint8)
    for name, index in (("shadow", 5), ("thin", 3), ("thick", 4), ("missing", 6)):
        truth[masks[name]] = index
    return truth


def _band_values(masks: dict[str, np.ndarray], truth: np.ndarray, band: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Reflectance of band ``band`` over ``truth``: surfaces, shadows, clouds and noise."""
    soil = masks["soil"]
    land = (1 - soil) * SPECTRA["vegetation"][band] + soil * SPECTRA["soil"][band]
    surface = np.select([truth == 1, truth == 2],
                        [_SURFACE_SPECTRA["water"][band], _SURFACE_SPECTRA["snow"][band]], land)
    surface = np.where(masks["shadow"], 0.4 * surface, surface)
    cloud, alpha = SPECTRA["cloud"][band], masks["alpha"]
    value = np.where(masks["thin"], (1 - alpha) * surface + alpha * cloud, surface)
    value = np.where(masks["thick"], cloud * masks["texture"], value)
    value = value + rng.normal(0, 0.003, value.shape)
    return np.where(masks["missing"], 0.0, value).astype(np.float32)


def synthetic_partial_scene(size: int = 32, *, seed: Any = 0,
                            bands: Sequence[str] = _S2_BANDS) -> tuple[np.ndarray, np.ndarray]:
    """A generated Sentinel-2-like scene and its full truth in all seven target classes.

    Land (vegetation/soil), water, snow, thin clouds blended over the surface, bright thick
    clouds, darkened shadows beside them and a no-data corner (values 0), built like
    :func:`~xcloud.training.kappaset.synthetic_kappaset`'s scenes.

    Parameters
    ----------
    size
        Side of the scene in pixels (at least 16).
    seed
        Seed of the scene (anything ``numpy.random.default_rng`` takes).
    bands
        The Sentinel-2 bands to give, in order (default: all 13).

    Returns
    -------
    image, truth
        ``(len(bands), size, size)`` float32 reflectance and ``(size, size)`` uint8 indices
        of :data:`TARGET_CLASSES`.

    Raises
    ------
    DatasetError
        For ``size`` below 16.
    """
    if size < 16:
        raise DatasetError("synthetic_partial_scene needs size >= 16")
    rng = np.random.default_rng(seed)
    masks = synthetic_masks(rng, size)
    truth = _truth(masks, rng, size)
    image = np.stack([_band_values(masks, truth, _S2_BANDS.index(b), rng) for b in bands])
    return image, truth


def _synthetic_dataset(scheme: PartialScheme, bands: Sequence[str], *, n_scenes: int,
                       size: int, seed: Any, random_bands: tuple[int, int] | None,
                       ) -> PartialLabelDataset:
    """``n_scenes`` generated scenes labelled in ``scheme``, with their full truth."""
    scenes = [synthetic_partial_scene(size, seed=[*np.atleast_1d(seed), i], bands=bands)
              for i in range(n_scenes)]
    truth = np.stack([t for _, t in scenes])
    return PartialLabelDataset(np.stack([image for image, _ in scenes]),
                               simulate_labels(truth, scheme), scheme, bands=bands,
                               truth=truth, random_bands=random_bands)


def synthetic_partial_datasets(
    *, n_scenes: int = 16, size: int = 32, seed: int = 0,
    bands_a: Sequence[str] = SYNTHETIC_A_BANDS, bands_b: Sequence[str] = _S2_BANDS,
    random_bands_b: tuple[int, int] | None = None,
) -> tuple[PartialLabelDataset, PartialLabelDataset]:
    """Two generated data sets that label the same kind of scenes differently.

    ``A`` (:data:`SYNTHETIC_A`, Landsat-like bands ``bands_a``) tells land, water and snow
    apart but lumps thin and thick cloud; ``B`` (:data:`SYNTHETIC_B`, all 13 bands by
    default) tells thin from thick cloud but lumps the clear surfaces. Both keep the full
    truth, so a model trained on both can be scored on every class.

    Parameters
    ----------
    n_scenes, size, seed
        Scenes per data set, their side in pixels and the seed of both data sets.
    bands_a, bands_b
        The Sentinel-2 bands of each data set.
    random_bands_b
        ``B``'s random band subsets in training (see :class:`PartialLabelDataset`).

    Returns
    -------
    a, b : PartialLabelDataset
        The two data sets.
    """
    a = _synthetic_dataset(SYNTHETIC_A, bands_a, n_scenes=n_scenes, size=size,
                           seed=[seed, 0], random_bands=None)
    b = _synthetic_dataset(SYNTHETIC_B, bands_b, n_scenes=n_scenes, size=size,
                           seed=[seed, 1], random_bands=random_bands_b)
    return a, b


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """A partial-label run's options: device, recovery weight, batches, progress."""

    device: Any
    aux_weight: float
    batch_size: int
    mix: bool
    recalibrate: bool
    progress: bool


class _Batch(NamedTuple):
    """One batch's tensors, on the run's device."""

    image: Any  # (N, B, H, W)
    descriptors: Any  # (N, B, D)
    band_mask: Any  # (N, B) bool where samples have fewer bands than B, else None
    multi_hot: Any  # (N, 7, H, W)

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward: ``band_mask`` if there is padding."""
        return {} if self.band_mask is None else {"band_mask": self.band_mask}


def _as_datasets(datasets: Any) -> list[PartialLabelDataset]:
    """Data sets as a list; KappaSet folders and data sets read with :data:`KAPPASET`."""
    from .kappaset import KappaSetDataset

    single = isinstance(datasets, (str, os.PathLike, KappaSetDataset, PartialLabelDataset))
    items = [datasets] if single else list(datasets)
    items = [PartialLabelDataset.from_kappaset(d) if isinstance(d, (str, os.PathLike,
             KappaSetDataset)) else d for d in items]
    if not is_partial_data(items):
        raise DatasetError("partial-label training needs PartialLabelDataset (s), KappaSet "
                           f"folders or KappaSetDataset (s), got {type(datasets).__name__}")
    return items


def _plan(datasets: Sequence[PartialLabelDataset], batch_size: int, rng: np.random.Generator,
          *, mix: bool) -> list[np.ndarray]:
    """Batches of ``(data set, image)`` index pairs (n, 2), in random order.

    ``mix``: any data sets in a batch; else each batch from one data set, batches interleaved.
    """
    pairs = [np.stack([np.full(len(d), k), rng.permutation(len(d))], axis=1)
             for k, d in enumerate(datasets) if len(d)]
    if not pairs:
        return []
    if mix:
        pairs = [np.concatenate(pairs)[rng.permutation(sum(len(p) for p in pairs))]]
    plan = [chunk for p in pairs
            for chunk in np.array_split(p, math.ceil(len(p) / batch_size))]
    return plan if mix else [plan[i] for i in rng.permutation(len(plan))]


def _band_choice(dataset: PartialLabelDataset, rng: np.random.Generator | None) -> np.ndarray:
    """Indices of the bands an image gets: a random subset in training, else all."""
    count = len(dataset.bands)
    if rng is None or dataset.random_bands is None:
        return np.arange(count)
    low, high = (min(max(1, b), count) for b in dataset.random_bands)
    return np.sort(rng.choice(count, int(rng.integers(low, high + 1)), replace=False))


def _sample(dataset: PartialLabelDataset, index: int,
            rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, descriptors, multi_hot)`` of one image, with its chosen bands."""
    bands = _band_choice(dataset, rng)
    return dataset.images[index, bands], dataset.descriptors[bands], dataset.multi_hot(index)


def _pad(arrays: Sequence[np.ndarray], width: int) -> np.ndarray:
    """``arrays`` stacked, each padded with zeros to ``width`` along its first axis."""
    return np.stack([np.concatenate([a, np.zeros((width - len(a), *a.shape[1:]), a.dtype)])
                     for a in arrays])


def _batch(datasets: Sequence[PartialLabelDataset], pairs: np.ndarray, device: Any,
           rng: np.random.Generator | None) -> _Batch:
    """The tensors of the images ``pairs``; fewer bands are padded and masked out."""
    import torch

    images, descriptors, labels = zip(*(_sample(datasets[k], int(i), rng) for k, i in pairs),
                                      strict=True)
    if len({image.shape[1:] for image in images}) > 1:
        raise DatasetError("images mixed in one batch must have one size; crop them alike "
                           "or pass mix=False")
    counts = np.array([len(image) for image in images])
    width = int(counts.max())
    mask = None if (counts == width).all() else torch.from_numpy(
        np.arange(width) < counts[:, None]).to(device)
    return _Batch(torch.from_numpy(_pad(images, width)).to(device),
                  torch.from_numpy(_pad(descriptors, width)).to(device), mask,
                  torch.from_numpy(np.stack(labels)).to(device))


def _losses(model: Any, batch: _Batch, setup: _Setup) -> tuple[Any, Any]:
    """Ambiguous cross-entropy and the recovery MSE (0 without one) of a batch.

    The recovery MSE is SEnSeI-v2's (``forward_with_recovery``, when the network has a
    recovery module and ``aux_weight`` is not 0), from the same embedding.
    """
    from .losses import ambiguous_cross_entropy

    if setup.aux_weight and getattr(model, "recovery_module", None) is not None:
        logits, aux = model.forward_with_recovery(batch.image, batch.descriptors,
                                                  **batch.options)
        return ambiguous_cross_entropy(logits, batch.multi_hot), aux
    logits = model(batch.image, batch.descriptors, **batch.options)
    return ambiguous_cross_entropy(logits, batch.multi_hot), logits.new_zeros(())


def _train_epoch(model: Any, datasets: Sequence[PartialLabelDataset], optimizer: Any,
                 scaler: Any, setup: _Setup, rng: np.random.Generator, epoch: int) -> Entry:
    """One epoch of :func:`~xcloud.training.loop.train_steps`, batch norm recalibrated after.

    Returns ``train_loss`` (``train_ce + aux_weight * train_aux``), ``train_ce`` and
    ``train_aux``, means over the batches (0 without any).
    """

    def step(pairs: np.ndarray) -> tuple[Any, tuple[float, ...]]:
        """The batch's weighted loss, its cross-entropy and recovery MSE."""
        ce, aux = _losses(model, _batch(datasets, pairs, setup.device, rng), setup)
        return ce + setup.aux_weight * aux, (float(ce.detach()), float(aux.detach()))

    plan = _plan(datasets, setup.batch_size, rng, mix=setup.mix)
    totals = np.zeros(2)
    for figures in train_steps(model, plan, step, optimizer, scaler=scaler,
                               progress=setup.progress, description=f"epoch {epoch}"):
        totals += figures
    ce, aux = (float(total) for total in totals / max(1, len(plan)))
    if setup.recalibrate:
        _recalibrate_batch_norm(model, datasets, setup, rng)
    return {"train_loss": ce + setup.aux_weight * aux, "train_ce": ce, "train_aux": aux}


def _recalibrate_batch_norm(model: Any, datasets: Sequence[PartialLabelDataset],
                            setup: _Setup, rng: np.random.Generator) -> None:
    """Batch-norm running statistics re-estimated for the current weights.

    Averaged (not smoothed) over up to :data:`BN_BATCHES` training batches: after few steps
    the running averages still mix in earlier weights' statistics (SEnSeI-v2's embedding
    norm has momentum 0.05) and inference in eval mode would suffer.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for pairs in _plan(datasets, setup.batch_size, rng, mix=setup.mix)[:BN_BATCHES]:
            batch = _batch(datasets, pairs, setup.device, rng)
            model(batch.image, batch.descriptors, **batch.options)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def _predictions(model: Any, dataset: PartialLabelDataset,
                 setup: _Setup) -> Iterator[tuple[np.ndarray, _Batch, Any]]:
    """``(image indices, batch, logits)`` over ``dataset`` in order, all bands, eval mode."""
    import torch

    model.eval()
    order = np.stack([np.zeros(len(dataset), int), np.arange(len(dataset))], axis=1)
    with torch.inference_mode():
        for start in range(0, len(dataset), setup.batch_size):
            pairs = order[start:start + setup.batch_size]
            batch = _batch([dataset], pairs, setup.device, None)
            yield pairs[:, 1], batch, model(batch.image, batch.descriptors, **batch.options)


def _validate(model: Any, datasets: Sequence[PartialLabelDataset],
              setup: _Setup) -> Entry:
    """``val_loss_<data set>``: each data set's mean ambiguous cross-entropy over its batches;
    ``val_loss``: their mean (nothing without validation images)."""
    from .losses import ambiguous_cross_entropy

    entry = {f"val_loss_{d.name}": float(np.mean([
        float(ambiguous_cross_entropy(logits, batch.multi_hot))
        for _, batch, logits in _predictions(model, d, setup)])) for d in datasets if len(d)}
    return {**entry, "val_loss": float(np.mean(list(entry.values())))} if entry else {}


def _save(path: Path, model: Any, datasets: Sequence[PartialLabelDataset],
          state: LoopState) -> None:
    """The best epoch's ``model`` to ``path``, with the history and the data sets' schemes.

    SEnSeI-v2 with :func:`~xcloud.models.sensei_published.save_checkpoint`, other models as a
    dict.
    """
    import torch

    from ..models.sensei_encoder import SEnSeIv2
    from ..models.sensei_published import save_checkpoint

    extra = {"epoch": state.history[-1]["epoch"], "history": state.history,
             "classes": list(TARGET_CLASSES),
             "datasets": {d.name: {"scheme": d.scheme.name, "bands": list(d.bands)}
                          for d in datasets}}
    if isinstance(model, SEnSeIv2):
        save_checkpoint(path, model, extra=extra)
    else:
        torch.save({"model": model.state_dict(), "meta": json.dumps(extra)}, path)


def train_partial(
    model: Any,
    datasets: PartialLabelDataset | Sequence[PartialLabelDataset],
    *,
    epochs: int = 10,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    aux_weight: float = 0.1,
    mix: bool = True,
    recalibrate_bn: bool = True,
    val_fraction: float = 0.0,
    patience: int | None = None,
    lr_patience: int = 5,
    lr_factor: float = 0.5,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` on partial labels of several data sets with the ambiguous cross-entropy.

    Parameters
    ----------
    model
        A torch module: ``model(image (N, B, H, W), descriptors (1, B, D))`` gives logits
        ``(N, 7, H, W)`` in :data:`TARGET_CLASSES` order, e.g.
        :func:`xcloud.models.sensei.sensei_v2`. SEnSeI-v2 built with a recovery module
        (``recovery=``) adds its recovery MSE (bands sampled at its ``sampling_rate``).
    datasets
        :class:`PartialLabelDataset` (s), each with its scheme, bands and band descriptors
        (KappaSet folders or data sets are read with :meth:`PartialLabelDataset.from_kappaset`).
    mix
        ``True``: a batch mixes images of all data sets (one image size needed); images with
        fewer bands are padded and masked out with the model's ``band_mask``, and batch
        norm sees the same mixture as at inference. ``False``: each batch from one data set
        (no padding), the batches of all data sets interleaved at random.
    recalibrate_bn
        After each epoch, re-estimate the batch-norm statistics of the epoch's final weights
        on up to :data:`BN_BATCHES` training batches (an average, not the running one), so
        that validation, checkpoints and inference in eval mode see them.
    epochs, batch_size, learning_rate
        Training length, images per batch and Adam's learning rate.
    aux_weight
        Weight of the recovery MSE (0: not computed).
    val_fraction
        Part of each data set held out for validation (``val_loss``: mean over the data sets
        of their mean ambiguous cross-entropy); 0 validates on nothing.
    patience, lr_patience, lr_factor
        Stop after ``patience`` epochs without a lower monitored loss (``None``: never);
        multiply the learning rate by ``lr_factor`` after ``lr_patience`` such epochs. The
        monitored loss is ``val_loss`` if there is validation data, else ``train_loss``.
    checkpoint
        Where to save the weights of the best epoch: SEnSeI-v2 with
        :func:`xcloud.models.sensei_published.save_checkpoint` (``extra`` holds the history and the
        data sets' schemes and bands), another model as ``{"model": state_dict, "meta":
        json}`` for ``torch.load(weights_only=True)``.
    device, seed, progress
        ``"auto"`` uses CUDA when present; the seed of weights, splits and batch order; a
        progress bar and a line per epoch.

    Returns
    -------
    list of dict
        One entry per epoch: ``epoch``, ``train_loss`` (``train_ce + aux_weight *
        train_aux``), ``train_ce``, ``train_aux``, ``val_loss`` and ``val_loss_<data set>``
        when validating, ``learning_rate``.
    """
    torch = import_optional("torch", extra="training")
    torch.manual_seed(seed)
    splits = [d.split(val_fraction, seed=seed) for d in _as_datasets(datasets)]
    setup = _Setup(torch_device(device), float(aux_weight), batch_size, mix, recalibrate_bn,
                   progress)
    model = model.to(setup.device)
    optimizer, scheduler = optimiser(model, learning_rate=learning_rate, lr_factor=lr_factor,
                                     lr_patience=lr_patience)
    rng = np.random.default_rng(seed)
    training, validation = [s[0] for s in splits], [s[1] for s in splits]
    scaler = torch.amp.GradScaler(setup.device.type, enabled=False)
    state = fit(epochs=epochs,
                train_epoch=partial(_train_epoch, model, training, optimizer, scaler, setup, rng),
                validate=partial(_validate, model, validation, setup), optimizer=optimizer,
                scheduler=scheduler, monitor=_monitored, patience=patience,
                on_best=None if checkpoint is None else partial(_save, Path(checkpoint), model,
                                                                training),
                describe=_epoch_line if progress else None)
    return state.history


def _monitored(entry: Entry) -> float:
    """What picks the best epoch: ``val_loss`` with validation data, else ``train_loss``."""
    return entry.get("val_loss", entry["train_loss"])


def _epoch_line(entry: Entry) -> str:
    """The line printed after an epoch."""
    validation = f", val loss {entry['val_loss']:.4f}" if "val_loss" in entry else ""
    return (f"epoch {entry['epoch']:>3}: train loss {entry['train_loss']:.4f} (ce "
            f"{entry['train_ce']:.4f}, aux {entry['train_aux']:.4f}){validation}, "
            f"lr {entry['learning_rate']:.2e}")


def evaluate_partial(model: Any, dataset: PartialLabelDataset, *, batch_size: int = 8,
                     device: str = "auto") -> Any:
    """The 7-class confusion matrix of ``model`` on ``dataset``.

    Scored against the full ``truth`` where the data set has one, else against the labels
    with a single candidate (ambiguous pixels left out). All bands are used.

    Parameters
    ----------
    model
        A torch module as :func:`train_partial` takes.
    dataset
        The images to score.
    batch_size, device
        Images per forward pass and the torch device (``"auto"``: CUDA when present).

    Returns
    -------
    xcloud.evaluation.metrics.ConfusionMatrix
        Over :data:`TARGET_CLASSES`.
    """
    from ..evaluation.metrics import ConfusionMatrix
    from .losses import multi_hot_to_labels

    setup = _Setup(torch_device(device), 0.0, batch_size, False, False, False)
    matrix = ConfusionMatrix(N_TARGETS, ignore_index=N_TARGETS, class_names=TARGET_CLASSES)
    model = model.to(setup.device)
    for indices, batch, logits in _predictions(model, dataset, setup):
        truth = (dataset.truth[indices] if dataset.truth is not None
                 else multi_hot_to_labels(batch.multi_hot.cpu(), fill=N_TARGETS).numpy())
        matrix.update(logits.argmax(1).cpu().numpy(), truth)
    return matrix


def _network(model: Any, seed: int) -> Any:
    """``model`` itself, or SEnSeI-v2 built from its name (``sensei-v2[-<head>]``), seeded."""
    if not isinstance(model, str):
        return model
    import torch

    from ..errors import UnknownModelError
    from ..models.sensei import DEFAULT_RECOVERY, HEADS, sensei_v2

    head = model.removeprefix("sensei-v2").removeprefix("-") or HEADS[0]
    if not model.startswith("sensei-v2") or head not in HEADS:
        raise UnknownModelError(f"partial-label training builds 'sensei-v2' or 'sensei-v2-<head>' "
                                f"(heads: {', '.join(HEADS)}), not {model!r}; or pass a module")
    torch.manual_seed(seed)
    return sensei_v2(head, recovery=DEFAULT_RECOVERY)


def fit_partial(
    data: Any,
    *,
    model: str | Any = "sensei-v2",
    checkpoint: str | os.PathLike[str] | None = None,
    epochs: int = 50,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    val_fraction: float = 0.2,
    patience: int | None = 10,
    lr_patience: int = 5,
    lr_factor: float = 0.5,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """:func:`train_partial` as :func:`xcloud.training.train.train` runs it for partial labels.

    Parameters
    ----------
    data
        :class:`PartialLabelDataset` (s), KappaSet folders or
        :class:`~xcloud.training.kappaset.KappaSetDataset` (s) (read with :data:`KAPPASET`).
    model
        ``"sensei-v2"`` (SegFormer-B0 head), ``"sensei-v2-<head>"`` or a torch module.
    checkpoint
        Where the best epoch's weights go (default ``sensei-v2.safetensors``).
    epochs, batch_size, learning_rate, val_fraction, patience, lr_patience, lr_factor
        As in :func:`train_partial`.
    resume
        Not available: ``True`` raises ``ValueError``.
    device, seed, progress
        As in :func:`train_partial`; ``seed`` also seeds a built network's weights.

    Returns
    -------
    xcloud.training.train.TrainResult
        History, best epoch (lowest ``val_loss``, or ``train_loss`` without validation) and
        whether it stopped early (fewer epochs than ``epochs``).

    Raises
    ------
    ValueError
        For ``resume=True``.
    xcloud.errors.UnknownModelError
        For a model name that is not ``sensei-v2[-<head>]``.
    """
    from .train import TrainResult

    if resume:
        raise ValueError("resume is not available for partial-label training")
    path = Path("sensei-v2.safetensors" if checkpoint is None else checkpoint)
    history = train_partial(
        _network(model, seed), _as_datasets(data), epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, val_fraction=val_fraction, patience=patience,
        lr_patience=lr_patience, lr_factor=lr_factor, checkpoint=path, device=device,
        seed=seed, progress=progress)
    monitored = [_monitored(entry) for entry in history]
    return TrainResult(path, history, best_epoch=int(np.argmin(monitored)) if history else -1,
                       stopped_early=len(history) < epochs)
