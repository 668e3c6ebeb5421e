"""Losses for partial (ambiguous) labels: every pixel names a *set* of possible classes.

A partial label is a multi-hot vector ``y`` over the ``C`` classes: ``y_i = 1`` for each class
the pixel may belong to (its candidates), e.g. ``land | water | snow`` for a data set whose
"clear" class does not say which surface it is (Francis 2024, SEnSeI-v2, IEEE TGRS, Sec. III;
eq. 5-8). With the softmax probabilities ``p`` and the candidate mass ``s = sum_i y_i p_i``
(the paper's "possibility score" phi):

**Ambiguous cross-entropy**::

    L_ACE = -log(s) = -log(sum_i y_i p_i)
          = logsumexp(z_i, i in candidates) - logsumexp(z_i, all i)   (z: logits)

computed in the second, numerically stable form. For a one-hot ``y`` it *is* the standard
cross-entropy ``-log p_k``. It depends on the candidates' probabilities only through ``s``:
moving probability mass between candidate classes changes neither the loss nor ``dL/ds =
-1/s``, and the gradient with respect to a non-candidate logit, ``dL/dz_j = p_j``, stays as
it was; the candidates' logits get ``dL/dz_i = p_i (1 - 1/s)``, which sums to ``s - 1``
whatever the split. The network is pushed out of the impossible classes, never told which
candidate to prefer.

**Ambiguous mean squared error** (as in the author's reference code: each candidate's
probability is replaced by the candidates' mean ``s / k``, ``k = sum_i y_i``, and compared
with the target ``y / k``)::

    pi_i   = s / k  if y_i = 1 else p_i
    L_AMSE = 1/C sum_i (pi_i - y_i / k)^2 = 1/C [ (1 - s)^2 / k + sum_{y_j = 0} p_j^2 ]

For a one-hot ``y`` (``k = 1``) this is the standard MSE between the softmax and the one-hot
vector, averaged over the classes (``torch.nn.functional.mse_loss(p, y)``). It depends on the
candidates' probabilities only through ``s`` (``dL/ds = -2 (1 - s) / (k C)``); unlike
``L_ACE``, each non-candidate probability counts on its own.

Pixels whose candidate set is empty (no information, e.g. unlabelled) are left out with
``ignore_empty=True``: they add nothing to the loss and are not counted in the mean.
The reference implementation takes ``log2`` in ``L_ACE``; here it is the natural logarithm,
so that it equals ``torch.nn.functional.cross_entropy`` (the two differ by ``ln 2``).
"""

from __future__ import annotations

from typing import Any

from ..errors import DatasetError

__all__ = [
    "REDUCTIONS",
    "ambiguous_cross_entropy",
    "ambiguous_mse",
    "labels_to_multi_hot",
    "multi_hot_to_labels",
]

REDUCTIONS = ("mean", "sum", "none")


def _candidates(logits: Any, multi_hot: Any, *, ignore_empty: bool) -> tuple[Any, Any]:
    """``(candidates, valid)``: bool candidates (empty sets filled in) and the labelled pixels."""
    import torch

    candidates = torch.as_tensor(multi_hot, device=logits.device) != 0
    if candidates.shape != logits.shape:
        raise DatasetError(f"partial labels of shape {tuple(candidates.shape)} do not match "
                           f"the logits {tuple(logits.shape)} (N, C, ...)")
    valid = candidates.any(dim=1)
    if not ignore_empty and not bool(valid.all()):
        raise DatasetError(f"{int((~valid).sum())} pixels have no candidate class; pass "
                           "ignore_empty=True to leave them out")
    # An empty set would give log(0): make it "any class" (loss 0, no gradient), then mask.
    return candidates | ~valid.unsqueeze(1), valid


def _as_float(logits: Any) -> Any:
    """``logits`` as float32 unless already float32 or wider (half precision is upcast)."""
    return logits if logits.is_floating_point() and logits.element_size() >= 4 else (
        logits.float())


def _reduce(loss: Any, valid: Any, reduction: str) -> Any:
    """Per-pixel ``loss`` zeroed outside ``valid``, then reduced as ``reduction`` says."""
    loss = loss * valid
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)


def _check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def ambiguous_cross_entropy(logits: Any, multi_hot: Any, *, ignore_empty: bool = True,
                            reduction: str = "mean") -> Any:
    """``-log(sum_i y_i p_i)`` per pixel, from logits, computed with ``logsumexp``.

    Parameters
    ----------
    logits
        ``(N, C, ...)`` tensor of class scores (before the softmax).
    multi_hot
        ``(N, C, ...)`` partial labels: nonzero (``True``) for each candidate class.
    ignore_empty
        Leave out pixels without any candidate; ``False`` raises
        :class:`~xcloud.errors.DatasetError` if there are any.
    reduction
        ``"mean"`` over the labelled pixels (0 if there are none), ``"sum"``, or ``"none"``:
        the ``(N, ...)`` per-pixel losses, 0 where left out.

    Returns
    -------
    torch.Tensor
        The loss (float32 or wider).
    """
    import torch

    _check_reduction(reduction)
    logits = _as_float(logits)
    candidates, valid = _candidates(logits, multi_hot, ignore_empty=ignore_empty)
    inside = torch.logsumexp(logits.masked_fill(~candidates, -torch.inf), dim=1)
    return _reduce(torch.logsumexp(logits, dim=1) - inside, valid, reduction)


def ambiguous_mse(logits: Any, multi_hot: Any, *, ignore_empty: bool = True,
                  reduction: str = "mean") -> Any:
    """``[(1 - s)^2 / k + sum over non-candidates of p_j^2] / C`` per pixel (see the module).

    ``s`` is the softmax mass on the ``k`` candidate classes. Equals
    ``mse_loss(softmax(logits), one_hot)`` for one-hot labels.

    Parameters
    ----------
    logits, multi_hot, ignore_empty, reduction
        As in :func:`ambiguous_cross_entropy`.

    Returns
    -------
    torch.Tensor
        The loss (float32 or wider).
    """
    import torch

    _check_reduction(reduction)
    logits = _as_float(logits)
    candidates, valid = _candidates(logits, multi_hot, ignore_empty=ignore_empty)
    proba = torch.softmax(logits, dim=1)
    inside = (proba * candidates).sum(dim=1)
    count = candidates.sum(dim=1)
    outside = (proba * ~candidates).square().sum(dim=1)
    loss = ((1 - inside).square() / count + outside) / logits.shape[1]
    return _reduce(loss, valid, reduction)


def labels_to_multi_hot(labels: Any, n_classes: int, *, ignore_index: int | None = None) -> Any:
    """Class indices as one-hot partial labels.

    Parameters
    ----------
    labels
        ``(N, ...)`` class indices (array or tensor).
    n_classes
        The number of classes ``C``.
    ignore_index
        Pixels equal to it get an empty candidate set (left out by the losses).

    Returns
    -------
    torch.Tensor
        ``(N, C, ...)`` bool.

    Raises
    ------
    DatasetError
        For other values outside ``0 .. n_classes - 1``.
    """
    import torch

    labels = torch.as_tensor(labels).long()
    ignored = (labels == ignore_index) if ignore_index is not None else torch.zeros_like(
        labels, dtype=torch.bool)
    inside = (labels >= 0) & (labels < n_classes)
    if not bool((inside | ignored).all()):
        raise DatasetError(f"class indices must lie in 0..{n_classes - 1}"
                           + (f" or be {ignore_index}" if ignore_index is not None else ""))
    hot = torch.nn.functional.one_hot(labels.clamp(0, n_classes - 1), n_classes).bool()
    return (hot & ~ignored.unsqueeze(-1)).movedim(-1, 1)


def multi_hot_to_labels(multi_hot: Any, *, fill: int = -1) -> Any:
    """Partial labels as class indices where they name one class.

    Parameters
    ----------
    multi_hot
        ``(N, C, ...)`` partial labels (array or tensor, nonzero for a candidate).
    fill
        The index of an ambiguous or empty pixel.

    Returns
    -------
    torch.Tensor
        ``(N, ...)`` int64: a pixel with exactly one candidate gets its index, others
        ``fill``.
    """
    import torch

    candidates = torch.as_tensor(multi_hot) != 0
    single = candidates.sum(dim=1) == 1
    return torch.where(single, candidates.int().argmax(dim=1), torch.full_like(
        single, fill, dtype=torch.long))
