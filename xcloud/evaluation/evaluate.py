"""Scoring registered models against reference labels, tile by tile, and feature importance.

Each tile is masked with :func:`xcloud.predict`; the mask and the labels are mapped to the finest
level their schemes share (:func:`~xcloud.evaluation.schemes.finest_shared_level`) and only
the counts are kept, so any number of tiles can be scored. Lazy (Dask) tiles are counted block
by block in parallel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..data.bands import canonical_band_name
from ..data.inputs import band_cube
from ..engine.predict import predict
from ..errors import BandError, DatasetError, MissingWeightsError, OptionalDependencyError
from ..models.protocol import ModelInfo
from ..models.registry import get, list_models
from .metrics import ConfusionMatrix, binary_metrics, json_float, json_per_class, percent_text
from .schemes import (
    CLOUD,
    IGNORE,
    INVALID,
    LabelScheme,
    Level,
    SchemeError,
    finest_shared_level,
    get_level,
    get_scheme,
    scheme_of_model,
)

__all__ = [
    "SUPERCLASSES",
    "Comparison",
    "Evaluation",
    "FeatureImportance",
    "evaluate_model",
    "evaluate_models",
    "feature_importance",
    "superclass_metrics",
]

Image = xr.DataArray | xr.Dataset
Images = Image | Iterable[Image]
Labels = Any  # one array (numpy, Dask, DataArray) of class values per tile, or an iterable

SUPERCLASSES: dict[str, tuple[str, str, frozenset[str]]] = {
    "cloud": ("cloud vs non-cloud", "cloud", CLOUD),
    "invalid": ("invalid vs valid", "valid", INVALID),
}
"""Super-classes (Francis 2024): key -> (title, level they need, positive meaning)."""


def superclass_metrics(cm: ConfusionMatrix, level: str | Level) -> dict[str, dict[str, float]]:
    """:func:`binary_metrics` of each super-class that ``level`` can express.

    ``cloud`` (cloud vs non-cloud) needs a level that refines ``cloud``, ``invalid`` (cloud and
    shadow vs clear) one that refines ``valid``.
    """
    level = get_level(level)
    return {key: binary_metrics(cm, level.members(meaning))
            for key, (_, needs, meaning) in SUPERCLASSES.items()
            if level.refines(get_level(needs))}


_SUPERCLASS_COLUMNS = (("prec. %", "precision", 9), ("recall %", "recall", 9), ("F1 %", "f1", 7),
                       ("bal. acc. %", "balanced_accuracy", 12), ("IoU %", "iou", 7))


def _dice_column(name: str) -> int:
    return max(11, len(name) + 6)


@dataclass(frozen=True)
class Evaluation:
    """The counts of one model against one set of labels, at one level.

    ``model_level`` is the processing level the model was made for; ``notes`` say e.g. that it
    differs from that of the data.
    """

    model: str
    model_level: str
    label_scheme: str
    level: str
    matrix: ConfusionMatrix
    notes: tuple[str, ...] = ()
    seconds: float = float("nan")

    def superclass(self) -> dict[str, dict[str, float]]:
        """Cloud vs non-cloud and invalid vs valid scores, where the level allows them."""
        return superclass_metrics(self.matrix, self.level)

    def table(self) -> str:
        """Per-class scores, confusion matrix and super-class scores as text."""
        lines = [f"== {self.model} ({self.model_level} model) vs {self.label_scheme} labels, "
                 f"level {self.level}, {self.seconds:.1f} s"]
        lines += [f"   note: {note}" for note in self.notes]
        lines += [self.matrix.table(), f"{'super-class':<22}"
                  + "".join(f"{title:>{width}}" for title, _, width in _SUPERCLASS_COLUMNS)]
        for key, scores in self.superclass().items():
            lines.append(f"{SUPERCLASSES[key][0]:<22}" + "".join(
                f"{percent_text(scores[score]):>{width}}" for _, score, width in
                _SUPERCLASS_COLUMNS))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready Python types (NaN as ``None``)."""
        superclass = {key: {name: json_float(v) for name, v in scores.items()}
                      for key, scores in self.superclass().items()}
        return {"model": self.model, "model_level": self.model_level,
                "label_scheme": self.label_scheme, "level": self.level,
                "notes": list(self.notes), "seconds": json_float(self.seconds),
                "metrics": self.matrix.to_dict(), "superclass": superclass}


@dataclass(frozen=True)
class Comparison:
    """Evaluations of several models on the same labels, and why others were skipped."""

    evaluations: tuple[Evaluation, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per model: accuracy, dice per class, cloud F1 and invalid F1 (in %)."""
        blocks = []
        for level in dict.fromkeys(e.level for e in self.evaluations):
            rows = [e for e in self.evaluations if e.level == level]
            names = rows[0].matrix.class_names
            header = (f"{'model':<16}{'made for':>9}{'acc %':>7}"
                      + "".join(f"{'dice ' + n:>{_dice_column(n)}}" for n in names)
                      + f"{'cloud F1 %':>11}{'invalid F1 %':>13}")
            blocks.append("\n".join([f"level {level}", header, *map(_summary_row, rows)]))
        skipped = [f"skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n\n".join(blocks + (["\n".join(skipped)] if skipped else []))

    def table(self) -> str:
        """Every model's full table, then the summary."""
        return "\n\n".join([*(e.table() for e in self.evaluations), self.summary()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready results and skip reasons."""
        return {"evaluations": [e.to_dict() for e in self.evaluations],
                "skipped": dict(self.skipped)}


def _summary_row(evaluation: Evaluation) -> str:
    cm = evaluation.matrix
    superclass = evaluation.superclass()
    made_for = evaluation.model_level + ("*" if evaluation.notes else "")
    dice = "".join(f"{percent_text(v):>{_dice_column(n)}}"
                   for n, v in zip(cm.class_names, cm.dice(), strict=True))
    f1 = [percent_text(superclass[k]["f1"]) if k in superclass else "-" for k in SUPERCLASSES]
    return (f"{evaluation.model:<16}{made_for:>9}{percent_text(cm.accuracy()):>7}{dice}"
            f"{f1[0]:>11}{f1[1]:>13}")


def _tiles(images: Images, labels: Labels) -> Iterator[tuple[Image, Any]]:
    if isinstance(images, xr.DataArray | xr.Dataset):
        return iter([(images, labels)])
    return zip(images, labels, strict=True)


def _level_array(scheme: LabelScheme, values: Any, level: Level) -> np.ndarray | da.Array:
    data = values.data if isinstance(values, xr.DataArray) else values
    if isinstance(data, da.Array):
        return da.map_blocks(scheme.to_level, data, level=level, dtype=np.uint8)
    return scheme.to_level(np.asarray(data), level)


def _block_counts(pred: np.ndarray, target: np.ndarray, template: ConfusionMatrix
                  ) -> ConfusionMatrix:
    empty = ConfusionMatrix(template.n_classes, ignore_index=template.ignore_index,
                            class_names=template.class_names)
    return empty.update(pred, target)


def _accumulate(cm: ConfusionMatrix, pred: Any, target: Any) -> None:
    if pred.shape != target.shape:
        raise DatasetError(f"labels of shape {target.shape} do not match the mask of shape "
                              f"{pred.shape}")
    if not isinstance(pred, da.Array) and not isinstance(target, da.Array):
        cm.update(pred, target)
        return
    pred = da.asarray(pred)
    target = da.asarray(target).rechunk(pred.chunks)
    blocks = zip(pred.to_delayed().ravel(), target.to_delayed().ravel(), strict=True)
    counts = [dask.delayed(_block_counts)(p, t, cm) for p, t in blocks]
    for part in dask.compute(*counts):
        cm.merge(part)


def _level_for(model: LabelScheme, truth: LabelScheme, level: str | Level | None) -> Level:
    if level is None:
        return finest_shared_level(model, truth)
    return truth.require(model.require(level))


def _notes(info: ModelInfo, data_level: str | None) -> tuple[str, ...]:
    if data_level is None or data_level.upper() == info.level.upper():
        return ()
    return (f"{info.name} is made for {info.level} input; the data are {data_level.upper()}",)


def _evaluate(model: str, tiles: Iterable[tuple[Image, Any]], *, label_scheme: str | LabelScheme,
              level: str | Level | None, data_level: str | None,
              predict_kwargs: Mapping[str, Any]) -> Evaluation:
    info = get(model).info
    model_scheme, truth_scheme = scheme_of_model(info), get_scheme(label_scheme)
    level = _level_for(model_scheme, truth_scheme, level)
    cm = ConfusionMatrix(len(level.classes), ignore_index=IGNORE, class_names=level.names)
    start = time.perf_counter()
    for image, truth in tiles:
        mask = predict(image, model=model, **predict_kwargs)
        _accumulate(cm, _level_array(model_scheme, mask, level),
                    _level_array(truth_scheme, truth, level))
    return Evaluation(model, info.level, truth_scheme.name, level.name, cm,
                      notes=_notes(info, data_level), seconds=time.perf_counter() - start)


def evaluate_model(model: str, images: Images, labels: Labels, *,
                   label_scheme: str | LabelScheme, level: str | Level | None = None,
                   data_level: str | None = None, **predict_kwargs: Any) -> Evaluation:
    """Score the registered ``model`` on ``images`` against ``labels``.

    Parameters
    ----------
    model
        Registry name (:func:`xcloud.models.list`).
    images
        A DataArray/Dataset as :func:`xcloud.predict` takes it, or an iterable of them (tiles).
    labels
        Class values of ``label_scheme`` with the shape of the mask (``(y, x)`` or
        ``(time, y, x)``): one array (numpy, Dask or DataArray) per tile.
    label_scheme
        Name of a registered :class:`~xcloud.evaluation.schemes.LabelScheme`, or one.
    level
        Level to score at; default the finest level that the model's and the labels' schemes
        share.
    data_level
        Processing level of the data (``"L1C"``, ``"L2A"``); a model made for another level is
        scored anyway, with a note.
    **predict_kwargs
        Passed to :func:`xcloud.predict` (``resolution``, ``device``, ``weights``...).

    Returns
    -------
    Evaluation
        Confusion matrix at the level, scores, super-class scores and timing.
    """
    return _evaluate(model, _tiles(images, labels), label_scheme=label_scheme, level=level,
                     data_level=data_level, predict_kwargs=predict_kwargs)


def _skip_reason(name: str, first_image: Image, label_scheme: str | LabelScheme,
                 level: str | Level | None, predict_kwargs: Mapping[str, Any]) -> str | None:
    info = get(name).info
    try:
        band_cube(first_image, info.bands)
        _level_for(scheme_of_model(info), get_scheme(label_scheme), level)
    except (SchemeError, BandError) as error:
        return str(error)
    if info.needs_weights_file and predict_kwargs.get("weights") is None:
        return "needs a weights file (weights=...)"
    return None


def evaluate_models(images: Images, labels: Labels, *, label_scheme: str | LabelScheme,
                    models: Sequence[str] | None = None, level: str | Level | None = None,
                    data_level: str | None = None, **predict_kwargs: Any) -> Comparison:
    """Score every registered model (or ``models``) that can run on ``images``.

    Models that lack input bands, need a weights file, miss an optional dependency or whose
    scheme shares no level with the labels are skipped with the reason. Parameters as in
    :func:`evaluate_model`; ``images`` and ``labels`` are read once per model, so pass
    sequences (or one image), not one-shot iterators.
    """
    tiles = list(_tiles(images, labels))
    if not tiles:
        raise DatasetError("no images to evaluate")
    evaluations, skipped = [], {}
    for name in list_models() if models is None else models:
        reason = _skip_reason(name, tiles[0][0], label_scheme, level, predict_kwargs)
        if reason is None:
            try:
                evaluations.append(_evaluate(name, tiles, label_scheme=label_scheme,
                                             level=level, data_level=data_level,
                                             predict_kwargs=predict_kwargs))
                continue
            except (MissingWeightsError, OptionalDependencyError) as error:
                reason = str(error)
        skipped[name] = reason
    return Comparison(tuple(evaluations), skipped)


@dataclass(frozen=True)
class FeatureImportance:
    """Per feature, ``1 - dice`` per class with that feature filled (Domnich et al. 2021, Fig. 11).

    ``baseline`` is the dice per class with all features; a feature matters for a class when
    its ``1 - dice`` is well above ``1 - baseline``.
    """

    model: str
    level: str
    class_names: tuple[str, ...]
    baseline: np.ndarray
    importance: Mapping[str, np.ndarray]

    def table(self) -> str:
        """Rows: features (first none filled); columns: ``1 - dice`` per class."""
        width = max(10, *(len(n) + 2 for n in self.class_names))
        lines = [f"feature importance of {self.model} at level {self.level}: 1 - dice per class",
                 f"{'filled':<10}" + "".join(f"{n:>{width}}" for n in self.class_names)]
        rows = {"(none)": 1 - self.baseline, **self.importance}
        for feature, values in rows.items():
            cells = ("-" if np.isnan(v) else f"{v:.3f}" for v in values)
            lines.append(f"{feature:<10}" + "".join(f"{c:>{width}}" for c in cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (NaN as ``None``)."""
        names = self.class_names
        return {"model": self.model, "level": self.level,
                "baseline_dice": json_per_class(self.baseline, names),
                "one_minus_dice": {f: json_per_class(v, names)
                                   for f, v in self.importance.items()}}


def _fill_value(info: ModelInfo, feature: str, fill: str,
                predict_kwargs: Mapping[str, Any]) -> float:
    """Value (in the input's units) that fills ``feature``: network input 0 or reflectance 0."""
    if fill not in ("input", "reflectance"):
        raise ValueError(f"fill must be 'input' or 'reflectance', got {fill!r}")
    norm = info.normalization
    value = 0.0
    if fill == "input" and norm.kind != "none" and norm.offset:
        value = float(norm.offset[info.bands.index(feature)])
    scale, offset = predict_kwargs.get("scale"), predict_kwargs.get("offset")
    return (value - (offset or 0.0)) / (1.0 if scale is None else scale)


def _filled(image: Image, info: ModelInfo, feature: str, value: float) -> xr.DataArray:
    cube = band_cube(image, info.bands)
    other = np.asarray(value if cube.dtype.kind == "f" else round(value)).astype(cube.dtype)
    return cube.where(cube["band"] != feature, other)


def _map_images(images: Images, function: Callable[[Image], Image]) -> Images:
    if isinstance(images, xr.DataArray | xr.Dataset):
        return function(images)
    return (function(image) for image in images)


def feature_importance(model: str, images: Images, labels: Labels, *,
                       label_scheme: str | LabelScheme, level: str | Level | None = None,
                       features: Sequence[str] | None = None, fill: str = "input",
                       **predict_kwargs: Any) -> FeatureImportance:
    """Importance of each input feature: ``1 - dice`` per class with the feature filled.

    Parameters
    ----------
    model, images, labels, label_scheme, level, **predict_kwargs
        As in :func:`evaluate_model`; ``images`` must be one image or a sequence.
    features
        Bands to fill one at a time (any alias); default all of the model's bands.
    fill
        ``"input"`` (default): the value that the model's normalisation maps to 0, so the
        network sees zeros in that channel (the KappaMask method); ``"reflectance"``: 0
        reflectance.

    Returns
    -------
    FeatureImportance
    """
    info = get(model).info
    features = info.bands if features is None else tuple(
        canonical_band_name(f) or f for f in features)
    unused = [f for f in features if f not in info.bands]
    if unused:
        raise BandError(f"{model} does not use band(s) {', '.join(unused)}; its bands: "
                        f"{', '.join(info.bands)}")
    values = {f: _fill_value(info, f, fill, predict_kwargs) for f in features}
    kwargs = {"label_scheme": label_scheme, "level": level, **predict_kwargs}
    baseline = evaluate_model(model, images, labels, **kwargs)
    importance = {}
    for feature, value in values.items():
        filled = _map_images(images, partial(_filled, info=info, feature=feature, value=value))
        importance[feature] = 1 - evaluate_model(model, filled, labels, **kwargs).matrix.dice()
    return FeatureImportance(model, baseline.level, baseline.matrix.class_names,
                             baseline.matrix.dice(), importance)
