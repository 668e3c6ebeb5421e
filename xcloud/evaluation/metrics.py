"""Confusion matrices accumulated over any number of tiles, and the scores read from them.

The matrix holds counts only, so a whole archive can be scored one tile (or one Dask block) at a
time: :meth:`ConfusionMatrix.update` adds a tile's counts and :meth:`ConfusionMatrix.merge` adds
another matrix, e.g. one computed on another worker.

Per-class scores follow Domnich et al. 2021 (KappaMask, Remote Sensing 13, 4100, Tables 2-5)::

    precision = TP / (TP + FP)      recall = TP / (TP + FN)
    dice = F1 = 2 TP / (2 TP + FP + FN)      IoU = TP / (TP + FP + FN)
    overall accuracy = trace / total

Scores that divide 0 by 0 are NaN, never 0: a class that is never predicted has no precision,
a class that never occurs has no recall, and one that neither occurs nor is predicted has no
dice or IoU. Balanced accuracy is the mean recall over the classes that occur (as in
scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ConfusionMatrix", "binary_metrics"]


def _as_int64(values: Any) -> np.ndarray:
    """A flat int64 numpy copy of a numpy array, torch tensor or array-like of integers."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "iub":
        raise ValueError(f"class values must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False).ravel()


def _ratio(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> np.ndarray:
    """``numerator / denominator`` as float64, NaN where the denominator is 0."""
    num = np.asarray(numerator, np.float64)
    den = np.asarray(denominator, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def percent_text(value: float) -> str:
    """``value`` in % with one decimal, ``"-"`` for NaN (for the text tables)."""
    return "-" if np.isnan(value) else f"{100 * value:.1f}"


def json_float(value: float) -> float | None:
    """``value`` as a plain float, ``None`` for NaN (for JSON)."""
    return None if np.isnan(value) else float(value)


def json_per_class(values: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """``{class name: json_float(value)}``."""
    return {n: json_float(v) for n, v in zip(names, values, strict=True)}


class ConfusionMatrix:
    """Counts of (truth, prediction) pairs for ``n_classes`` classes ``0 .. n_classes - 1``.

    Parameters
    ----------
    n_classes
        Number of classes.
    ignore_index
        Truth value that is not scored (e.g. UNDEFINED): those pixels are skipped. A
        prediction equal to it is skipped too if it lies outside the classes (e.g. 255 where
        the input had no data) and counted like any class if inside (a model that predicts
        UNDEFINED on labelled pixels is wrong there).
    class_names
        Names used by :meth:`table` and :meth:`to_dict` (default ``"0"``, ``"1"``...).

    Attributes
    ----------
    matrix : numpy.ndarray
        ``(n_classes, n_classes)`` int64 counts; **rows are the truth, columns the
        prediction** (``matrix[t, p]`` pixels of class ``t`` were predicted as ``p``), as in
        :func:`sklearn.metrics.confusion_matrix`.
    n_ignored : int
        Pixels skipped so far (ignored or out-of-range truth, ignored prediction).
    """

    def __init__(self, n_classes: int, *, ignore_index: int | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        names = tuple(str(i) for i in range(n_classes)) if class_names is None else tuple(
            class_names)
        if len(names) != n_classes:
            raise ValueError(f"{len(names)} class names for {n_classes} classes")
        self.class_names = names
        self.ignore_index = ignore_index
        self.matrix = np.zeros((n_classes, n_classes), np.int64)
        self.n_ignored = 0

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return self.matrix.shape[0]

    @property
    def total(self) -> int:
        """Number of scored pixels."""
        return int(self.matrix.sum())

    def __repr__(self) -> str:
        return (f"ConfusionMatrix({self.n_classes}, classes={list(self.class_names)}, "
                f"pixels={self.total}, ignored={self.n_ignored})")

    def update(self, pred: Any, target: Any) -> ConfusionMatrix:
        """Add the pixels of one tile: ``pred`` and ``target`` of equal shape (numpy or torch).

        Truth equal to ``ignore_index`` or outside ``0 .. n_classes - 1``, and predictions
        equal to an ``ignore_index`` outside the classes, are skipped and counted in
        :attr:`n_ignored`; any other prediction outside the classes is an error.
        """
        pred, target = _as_int64(pred), _as_int64(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.size} values, truth has {target.size}")
        n = self.n_classes
        keep = (target >= 0) & (target < n)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
            if not 0 <= self.ignore_index < n:  # no class: a prediction of it is no prediction
                keep &= pred != self.ignore_index
        pred, target = pred[keep], target[keep]
        outside = (pred < 0) | (pred >= n)
        if outside.any():
            raise ValueError(f"predictions {np.unique(pred[outside])[:10].tolist()} are not "
                             f"classes 0..{n - 1} nor the ignore index {self.ignore_index}")
        self.matrix += np.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        self.n_ignored += int(keep.size - keep.sum())
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of ``other`` (same classes) to this matrix, in place."""
        if other.class_names != self.class_names:
            raise ValueError(f"cannot merge classes {other.class_names} into {self.class_names}")
        self.matrix += other.matrix
        self.n_ignored += other.n_ignored
        return self

    def collapse(self, groups: Sequence[Sequence[int]],
                 names: Sequence[str] | None = None) -> ConfusionMatrix:
        """Matrix of coarser classes: new class ``i`` is the union of the classes ``groups[i]``.

        The groups must partition the classes (e.g. ``[[0, 1], [2]]`` for clear + shadow vs
        cloud).
        """
        assign = np.full(self.n_classes, -1)
        for new, members in enumerate(groups):
            members = list(members)
            if (assign[members] >= 0).any():
                raise ValueError(f"groups {groups} overlap")
            assign[members] = new
        if (assign < 0).any():
            raise ValueError(f"groups {groups} leave out classes {np.flatnonzero(assign < 0)}")
        out = ConfusionMatrix(len(groups), ignore_index=self.ignore_index, class_names=names)
        np.add.at(out.matrix, (assign[:, None], assign[None, :]), self.matrix)
        out.n_ignored = self.n_ignored
        return out

    def support(self) -> np.ndarray:
        """Pixels of each class in the truth (row sums)."""
        return self.matrix.sum(axis=1)

    def predicted(self) -> np.ndarray:
        """Pixels predicted as each class (column sums)."""
        return self.matrix.sum(axis=0)

    def _tp_fp_fn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tp = np.diag(self.matrix)
        return tp, self.predicted() - tp, self.support() - tp

    def precision(self) -> np.ndarray:
        """Per-class TP / (TP + FP); NaN for a class never predicted."""
        tp, fp, _ = self._tp_fp_fn()
        return _ratio(tp, tp + fp)

    def recall(self) -> np.ndarray:
        """Per-class TP / (TP + FN); NaN for a class absent from the truth."""
        tp, _, fn = self._tp_fp_fn()
        return _ratio(tp, tp + fn)

    def dice(self) -> np.ndarray:
        """Per-class dice 2 TP / (2 TP + FP + FN) (= F1); NaN if neither present nor predicted."""
        tp, fp, fn = self._tp_fp_fn()
        return _ratio(2 * tp, 2 * tp + fp + fn)

    f1 = dice

    def iou(self) -> np.ndarray:
        """Per-class intersection over union TP / (TP + FP + FN) (Jaccard index)."""
        tp, fp, fn = self._tp_fp_fn()
        return _ratio(tp, tp + fp + fn)

    def accuracy(self) -> float:
        """Overall accuracy: correctly classified pixels over all scored pixels."""
        return float(_ratio(np.trace(self.matrix), self.total))

    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present in the truth."""
        recall = self.recall()
        present = recall[~np.isnan(recall)]
        return float(present.mean()) if present.size else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Counts and scores as plain JSON-ready Python types (NaN as ``None``)."""
        names = self.class_names
        return {
            "class_names": list(names),
            "matrix": self.matrix.tolist(),
            "pixels": self.total,
            "ignored": self.n_ignored,
            "accuracy": json_float(self.accuracy()),
            "balanced_accuracy": json_float(self.balanced_accuracy()),
            **{score: json_per_class(getattr(self, score)(), names)
               for score in ("dice", "precision", "recall", "iou")},
        }

    def table(self) -> str:
        """Per-class scores (in %), overall accuracy and the matrix as a readable text table."""
        width = max(12, *(len(n) for n in self.class_names)) + 2
        lines = [f"{'class':<{width}}{'truth px':>10}{'pred px':>10}{'dice %':>8}"
                 f"{'prec. %':>9}{'recall %':>9}{'IoU %':>7}"]
        scores = zip(self.class_names, self.support(), self.predicted(), self.dice(),
                     self.precision(), self.recall(), self.iou(), strict=True)
        for name, truth, predicted, *values in scores:
            dice, precision, recall, iou = (percent_text(v) for v in values)
            lines.append(f"{name:<{width}}{truth:>10}{predicted:>10}{dice:>8}{precision:>9}"
                         f"{recall:>9}{iou:>7}")
        lines.append(f"overall accuracy {percent_text(self.accuracy())} %, balanced accuracy "
                     f"{percent_text(self.balanced_accuracy())} %, {self.total} px scored, "
                     f"{self.n_ignored} ignored")
        lines.append("confusion matrix (rows: truth, columns: prediction)")
        column = max(10, *(len(n) + 1 for n in self.class_names))
        lines.append(f"{'':<{width}}" + "".join(f"{n:>{column}}" for n in self.class_names))
        for name, row in zip(self.class_names, self.matrix, strict=True):
            lines.append(f"{name:<{width}}" + "".join(f"{v:>{column}}" for v in row))
        return "\n".join(lines)


def binary_metrics(cm: ConfusionMatrix, positive: Sequence[int]) -> dict[str, float]:
    """Scores of the super-class ``positive`` (class indices) against all other classes.

    E.g. cloud vs non-cloud (positive = thin and thick cloud) or invalid vs valid (positive =
    cloud and cloud shadow), as in Francis 2024 (SEnSeI-v2).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``iou`` of the positive super-class,
        ``balanced_accuracy`` ((recall + specificity) / 2) and ``accuracy``; NaN where 0/0.
    """
    positive = sorted(set(positive))
    negative = [i for i in range(cm.n_classes) if i not in positive]
    if not positive or not negative or positive[0] < 0 or positive[-1] >= cm.n_classes:
        raise ValueError(f"positive classes {positive} must be a proper subset of "
                         f"0..{cm.n_classes - 1}")
    binary = cm.collapse([negative, positive], names=("negative", "positive"))
    return {
        "precision": float(binary.precision()[1]),
        "recall": float(binary.recall()[1]),
        "f1": float(binary.f1()[1]),
        "iou": float(binary.iou()[1]),
        "balanced_accuracy": binary.balanced_accuracy(),
        "accuracy": binary.accuracy(),
    }
